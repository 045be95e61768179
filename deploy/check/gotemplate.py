"""The part of Go's text/template (with Helm's functions) that Sluice's chart uses.

No `helm` binary can be installed from the registries this project may use, so
the packaging test renders the chart itself. Anything outside the subset is an
error, never silently dropped: a chart edit that needs more fails the test
rather than rendering something Helm would not.

Supported: `{{ }}` with `{{-`/`-}}` trimming, comments, `if`/`else if`/`else`,
`with`, `range` (with `$k, $v :=`), `define` + `include`, pipelines, fields of
`.`/`$`/variables, string/number/bool literals, parenthesised pipelines, and
the functions in FUNCTIONS.
"""

import base64
import hashlib
import json
import re

import yaml


class TemplateError(Exception):
    pass


ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)


def tokenize(source):
    """Splits text and actions, applying the trim markers."""
    parts = []
    pos = 0
    for m in ACTION.finditer(source):
        text = source[pos : m.start()]
        if m.group(1):
            text = text.rstrip(" \t\r\n")
        parts.append(("text", text))
        parts.append(("action", m.group(2).strip(), bool(m.group(3))))
        pos = m.end()
    parts.append(("text", source[pos:]))
    out = []
    trim_next = False
    for part in parts:
        if part[0] == "text":
            text = part[1].lstrip(" \t\r\n") if trim_next else part[1]
            out.append(("text", text))
            trim_next = False
        else:
            out.append(("action", part[1]))
            trim_next = part[2]
    return out


def parse(tokens, defines):
    """Builds a tree of nodes; `define` blocks go into `defines`."""
    stack = [("root", [], None)]

    def body():
        return stack[-1][1]

    for token in tokens:
        if token[0] == "text":
            if token[1]:
                body().append(("text", token[1]))
            continue
        action = token[1]
        if action.startswith("/*"):
            continue
        word, _, rest = action.partition(" ")
        rest = rest.strip()
        if word in ("if", "with", "range"):
            node = {"kind": word, "branches": [(rest, [])], "else": None}
            body().append(("block", node))
            stack.append((word, node["branches"][0][1], node))
        elif word == "define":
            name = parse_string(rest)
            defines[name] = []
            stack.append(("define", defines[name], None))
        elif word == "else":
            kind, _, node = stack.pop()
            if kind not in ("if", "with", "range"):
                raise TemplateError("else outside if/with/range")
            if rest.startswith("if "):
                node["branches"].append((rest[3:].strip(), []))
                stack.append((kind, node["branches"][-1][1], node))
            else:
                node["else"] = []
                stack.append((kind, node["else"], node))
        elif word == "end":
            if len(stack) == 1:
                raise TemplateError("end without a block")
            stack.pop()
        elif word in ("template", "block", "break", "continue"):
            raise TemplateError(f"`{word}` is outside the supported subset")
        else:
            body().append(("action", action))
    if len(stack) != 1:
        raise TemplateError(f"unclosed `{stack[-1][0]}`")
    return stack[0][1]


def parse_string(text):
    text = text.strip()
    if text.startswith('"'):
        return json.loads(text)
    if text.startswith("`"):
        return text.strip("`")
    raise TemplateError(f"expected a string, got {text!r}")


TOKEN = re.compile(
    r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*"|`[^`]*`)|(?P<num>-?\d+(?:\.\d+)?)'
    r"|(?P<open>\()|(?P<close>\))|(?P<pipe>\|)|(?P<assign>:=)|(?P<comma>,)"
    r"|(?P<word>[$.A-Za-z_][\w.$]*))"
)


def lex(expr):
    pos, tokens = 0, []
    while pos < len(expr):
        if expr[pos:].strip() == "":
            break
        m = TOKEN.match(expr, pos)
        if not m:
            raise TemplateError(f"cannot read {expr[pos:]!r}")
        kind = m.lastgroup
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    return tokens


def truthy(value):
    return value not in (None, False, 0, "", [], {}) and value == value


def go_string(value):
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def to_yaml(value):
    if value is None or value == {} or value == []:
        return "{}" if isinstance(value, dict) else ("[]" if value == [] else "null")
    return yaml.safe_dump(value, default_flow_style=False, sort_keys=True).rstrip("\n")


def indent(n, text):
    pad = " " * int(n)
    return "\n".join(pad + line for line in go_string(text).split("\n"))


def required(message, value):
    if not truthy(value) and value is not False:
        raise TemplateError(message)
    return value


FUNCTIONS = {
    "quote": lambda *v: " ".join(json.dumps(go_string(x)) for x in v),
    "squote": lambda *v: " ".join("'" + go_string(x) + "'" for x in v),
    "default": lambda d, v=None: v if truthy(v) else d,
    "required": required,
    "toYaml": to_yaml,
    "toJson": lambda v: json.dumps(v, separators=(",", ":"), sort_keys=True),
    "indent": indent,
    "nindent": lambda n, t: "\n" + indent(n, t),
    "trunc": lambda n, s: go_string(s)[: int(n)],
    "trimSuffix": lambda suf, s: go_string(s)[: -len(suf)] if go_string(s).endswith(suf) else go_string(s),
    "printf": lambda fmt, *args: re.sub(r"%[sdv]", "{}", fmt).format(*map(go_string, args)),
    "b64enc": lambda s: base64.b64encode(go_string(s).encode()).decode(),
    "sha256sum": lambda s: hashlib.sha256(go_string(s).encode()).hexdigest(),
    "toString": go_string,
    "int": lambda v: int(v or 0),
    "add": lambda *v: sum(int(x) for x in v),
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "not": lambda v: not truthy(v),
    "and": lambda *v: next((x for x in v if not truthy(x)), v[-1]),
    "or": lambda *v: next((x for x in v if truthy(x)), v[-1]),
    "empty": lambda v: not truthy(v),
    "hasKey": lambda d, k: isinstance(d, dict) and k in d,
    "upper": lambda s: go_string(s).upper(),
    "lower": lambda s: go_string(s).lower(),
}


class Renderer:
    def __init__(self, defines, root):
        self.defines = defines
        self.root = root

    def render(self, nodes, dot, scope):
        out = []
        for node in nodes:
            if node[0] == "text":
                out.append(node[1])
            elif node[0] == "action":
                value = self.pipeline(node[1], dot, scope)
                if value is not _ASSIGNED:
                    out.append(go_string(value))
            else:
                out.append(self.block(node[1], dot, scope))
        return "".join(out)

    def block(self, node, dot, scope):
        kind = node["kind"]
        if kind == "range":
            expr = node["branches"][0][0]
            names = []
            if ":=" in expr:
                left, expr = expr.split(":=", 1)
                names = [n.strip() for n in left.split(",")]
            items = self.pipeline(expr, dot, scope)
            if not truthy(items):
                return self.render(node["else"] or [], dot, scope)
            pairs = sorted(items.items()) if isinstance(items, dict) else list(enumerate(items))
            out = []
            for key, value in pairs:
                inner = dict(scope)
                if len(names) == 2:
                    inner[names[0]], inner[names[1]] = key, value
                elif len(names) == 1:
                    inner[names[0]] = value
                out.append(self.render(node["branches"][0][1], value, inner))
            return "".join(out)
        for expr, body in node["branches"]:
            value = self.pipeline(expr, dot, scope)
            if truthy(value):
                return self.render(body, value if kind == "with" else dot, scope)
        return self.render(node["else"] or [], dot, scope)

    def pipeline(self, expr, dot, scope):
        tokens = lex(expr)
        if len(tokens) >= 2 and tokens[1][0] == "assign":
            scope[tokens[0][1]] = self.run(tokens[2:], dot, scope)
            return _ASSIGNED
        return self.run(tokens, dot, scope)

    def run(self, tokens, dot, scope):
        commands, depth, current = [], 0, []
        for tok in tokens:
            if tok[0] == "open":
                depth += 1
            elif tok[0] == "close":
                depth -= 1
            if tok[0] == "pipe" and depth == 0:
                commands.append(current)
                current = []
            else:
                current.append(tok)
        commands.append(current)
        value, first = None, True
        for command in commands:
            value = self.command(command, dot, scope, None if first else (value,))
            first = False
        return value

    def command(self, tokens, dot, scope, piped):
        args, i = [], 0
        while i < len(tokens):
            kind, text = tokens[i]
            if kind == "open":
                depth, j = 1, i + 1
                while depth:
                    depth += {"open": 1, "close": -1}.get(tokens[j][0], 0)
                    j += 1
                args.append(("value", self.run(tokens[i + 1 : j - 1], dot, scope)))
                i = j
                continue
            if kind == "str":
                args.append(("value", parse_string(text)))
            elif kind == "num":
                args.append(("value", float(text) if "." in text else int(text)))
            elif kind == "word":
                args.append(("word", text))
            else:
                raise TemplateError(f"unexpected {text!r}")
            i += 1
        if not args:
            raise TemplateError("empty command")
        head_kind, head = args[0]
        rest = [self.operand(a, dot, scope) for a in args[1:]] + list(piped or ())
        if head_kind == "word" and head == "include":
            name, context = rest
            if name not in self.defines:
                raise TemplateError(f"no template named {name!r}")
            return self.render(self.defines[name], context, {"$": context})
        if head_kind == "word" and head in FUNCTIONS:
            return FUNCTIONS[head](*rest)
        if rest:
            raise TemplateError(f"{head!r} is not a function but has arguments")
        return self.operand(args[0], dot, scope)

    def operand(self, arg, dot, scope):
        kind, text = arg
        if kind == "value":
            return text
        if text in ("true", "false"):
            return text == "true"
        if text == "nil":
            return None
        if text == ".":
            return dot
        if text.startswith("$"):
            name, _, path = text.partition(".")
            if name not in scope:
                raise TemplateError(f"undefined variable {name}")
            return lookup(scope[name], path)
        if text.startswith("."):
            return lookup(dot, text[1:])
        if text in FUNCTIONS:
            return FUNCTIONS[text]()
        raise TemplateError(f"unknown function {text!r}")


_ASSIGNED = object()


def lookup(value, path):
    for part in filter(None, path.split(".")):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def render_chart(templates, values, release_name="sluice", namespace="default", chart=None):
    """templates: {file name: source}. Returns {file name: rendered text} for
    every file that does not start with `_` (helpers only define)."""
    defines, trees = {}, {}
    for name, source in sorted(templates.items()):
        trees[name] = parse(tokenize(source), defines)
    root = {
        "Values": values,
        "Release": {"Name": release_name, "Namespace": namespace, "Service": "Helm"},
        "Chart": chart or {},
    }
    return {
        name: Renderer(defines, root).render(tree, root, {"$": root})
        for name, tree in trees.items()
        if not name.split("/")[-1].startswith("_")
    }
