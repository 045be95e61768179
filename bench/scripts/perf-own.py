#!/usr/bin/env python3
"""Where a gateway profile's samples go, by the gateway's own code.

Reads `perf script` output of a profile taken with DWARF call graphs (the
release build has no frame pointers, so `perf record -g` gives none):

    perf record -e cpu-clock -F 1999 --call-graph dwarf,16384 -p <sluice> -- sleep 5
    perf script -i perf.data > script.txt          # ~3 minutes for 5 s here
    bench/scripts/perf-own.py script.txt            # by innermost sluice_gateway frame
    bench/scripts/perf-own.py script.txt --under OpenAiCompat::chat_inner

Each sample is charged to the innermost `sluice_gateway::` function on its
stack (with what it called in libraries), or to the first library frame
when none of ours is on it; the kernel's share of each is shown beside it.
`--under NAME` instead breaks down the samples whose stack holds NAME by
the frame just below it.
"""
import collections
import re
import sys


def frames(sample):
    lines = sample.strip().split("\n")
    if len(lines) < 2:
        return None
    names = []
    for line in lines[1:]:
        parts = line.strip().split(" ", 1)
        name = parts[1] if len(parts) > 1 else ""
        names.append(re.sub(r"\+0x[0-9a-f]+", "", name).split(" (")[0])
    in_kernel = lines[1].rstrip().endswith("([kernel.kallsyms])")
    return names, in_kernel


def owner(names):
    for name in names:
        found = re.search(r"sluice_gateway::[A-Za-z_:]+", name)
        if found:
            return found.group(0).rstrip(":")
    for name in names:
        lib = re.match(r"<?([a-z_0-9]+)::", name)
        if lib and lib.group(1) not in ("core", "alloc", "std", "tokio", "futures_util"):
            return "lib:" + lib.group(1)
    return "(other)"


def main():
    args = sys.argv[1:]
    if not args:
        sys.exit(__doc__)
    under = args[args.index("--under") + 1] if "--under" in args else None
    samples = open(args[0], encoding="utf-8", errors="replace").read().split("\n\n")
    total = 0
    counts = collections.Counter()
    kernel = collections.Counter()
    for sample in samples:
        parsed = frames(sample)
        if parsed is None:
            continue
        names, in_kernel = parsed
        total += 1
        if under:
            hits = [i for i, n in enumerate(names) if under in n]
            if not hits:
                continue
            below = [n for n in names[: max(hits)] if not re.match(r"(core|alloc|std)::|\{|<core|<alloc|poll", n)]
            key = below[-1][:90] if below else "(itself)"
        else:
            key = owner(names)
        counts[key] += 1
        kernel[key] += in_kernel
    print(f"{total} samples")
    for key, n in counts.most_common(50):
        print(f"{100 * n / total:5.1f}%  (kernel {100 * kernel[key] / total:4.1f}%)  {key}")


if __name__ == "__main__":
    main()
