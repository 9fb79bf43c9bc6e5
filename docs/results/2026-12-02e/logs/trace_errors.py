"""Where the 'pieces' traces of a run's eval completions go wrong (fifth session's error analysis).

    python docs/results/2026-12-02e/logs/trace_errors.py docs/results/2026-12-02e/count/eval_samples.jsonl.gz

For each eval stage and tier, the wrong answers by kind: a piece copied wrong (the bracketed pieces
do not rebuild the string), a piece spelled wrong (its letters are not the piece), or a right trace
with a wrong answer; then, over every completion of a stage, how often a piece of each length is
spelled wrong. Reads only the committed eval_samples file.
"""

import collections
import gzip
import json
import re
import sys


def task_string(row: dict) -> str:
    return re.search(r"in the string ([a-z]+)", row["prompt"][-1]["content"]).group(1)


def trace_pieces(completion: str) -> list[tuple[str | None, str]]:
    """(piece or None for a lone character, the letters written for it), in order."""
    seq: list[list] = []
    for line in completion.split("<answer>")[0].splitlines()[1:]:
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            seq.append([line[1:-1], ""])
            continue
        char = re.fullmatch(r"([a-z])(?:=\d+)?", line)
        if char is None:
            continue
        if seq and seq[-1][0] is not None and len(seq[-1][1]) < len(seq[-1][0]):
            seq[-1][1] += char.group(1)
        else:
            seq.append([None, char.group(1)])
    return [(piece, letters) for piece, letters in seq]


def kind(row: dict) -> str:
    seq = trace_pieces(row["completion"])
    if "".join(piece if piece is not None else letters for piece, letters in seq) != task_string(row):
        return "piece copied wrong"
    if any(piece is not None and letters != piece for piece, letters in seq):
        return "piece spelled wrong"
    return "trace right"


def main(path: str) -> None:
    rows = [json.loads(line) for line in gzip.open(path, "rt")]
    stages = sorted({r["stage"] for r in rows if r["stage"] != "base"})
    for stage in stages:
        for tier in sorted({r["tier"] for r in rows}):
            wrong = [r for r in rows if r["stage"] == stage and r["tier"] == tier and not r["correct"]]
            print(stage, "tier", tier, "wrong", len(wrong), dict(collections.Counter(map(kind, wrong))))
        bad, total = collections.Counter(), collections.Counter()
        for r in rows:
            if r["stage"] == stage:
                for piece, letters in trace_pieces(r["completion"]):
                    if piece is not None:
                        total[len(piece)] += 1
                        bad[len(piece)] += letters != piece
        print(stage, "pieces spelled wrong / written, by length:", {n: (bad[n], total[n]) for n in sorted(total)})


if __name__ == "__main__":
    main(sys.argv[1])
