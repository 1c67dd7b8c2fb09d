#!/usr/bin/env python3
"""Figures for hostile input (issue 12): peak memory and time of `converge validate` on the worst
inputs tried, refused and accepted. No cluster needed.

    cargo build --release --bin converge && python3 benches/hostile.py

Each case is a real git commit in a temporary repository; each run is `/usr/bin/time -f` around
`converge validate` under a 4 GB address-space limit (so a regression fails fast rather than
taking the machine). Prints a table (exit status, max RSS, wall time, first finding) and writes
it as JSON to target/hostile-bench.json. The first row, the shipped `desired/`, is the baseline.
Environment: CONVERGE_BIN (default target/release/converge).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("CONVERGE_BIN", os.path.join(ROOT, "target/release/converge"))

STACK = "apiVersion: converge.dev/v1alpha1\nkind: Stack\nname: s\nnamespace: s\nchart: charts/app\n"
COMP = "apiVersion: converge.dev/v1alpha1\nkind: Component\nname: web\nimage:\n  ref: nginx:1.27\n"


def laughs():
    lines = ["values:", "  a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, 10):
        lines.append(f"  a{i}: &a{i} [" + ", ".join([f"*a{i-1}"] * 9) + "]")
    return STACK + "\n".join(lines) + "\n"


def deep_long_keys():
    key = "k" * 1000
    body, ind = STACK + "values:\n", "  "
    for _ in range(60):
        body += ind + key + ":\n"
        ind += "  "
    return body + ind + "x: [" + ",".join(["0"] * 49_000) + "]\n"


CASES = [
    # (name, what, files)
    ("alias bomb", "1 KiB: 9 levels of 9 aliases (~3.9e8 values)", {"desired/stack.yaml": laughs()}),
    ("deep 40k", "block list nested 40,000 levels", {"desired/stack.yaml": STACK + "values:\n  x:\n  " + "- " * 40_000 + "1\n"}),
    ("deep flow 40k", "[[[…]]] 40,000 levels", {"desired/stack.yaml": STACK + "values:\n  x: " + "[" * 40_000 + "]" * 40_000 + "\n"}),
    ("1 MiB flow list", "one list of ~520,000 values", {"desired/stack.yaml": STACK + "values:\n  x: [" + ",".join(["0"] * 520_000) + "]\n"}),
    ("1 MiB map", "85,000 `kN: v` lines", {"desired/stack.yaml": STACK + "values:\n" + "".join(f"  k{i}: v\n" for i in range(85_000))}),
    ("accepted: 49,900 values", "the most values accepted, in one list", {"desired/stack.yaml": STACK + "values:\n  x: [" + ",".join(["0"] * 49_900) + "]\n"}),
    ("accepted: aliases", "a 1,000-value list aliased 48 times", {"desired/stack.yaml": STACK + "values:\n  base: &b [" + ",".join(["0"] * 1000) + "]\n  copies: [" + ",".join(["*b"] * 48) + "]\n"}),
    ("accepted: 1 MiB scalar x3", "a 990 KB string aliased 3 times", {"desired/stack.yaml": STACK + "values:\n  s: &s " + "x" * 990_000 + "\n  c: [*s, *s, *s]\n"}),
    ("accepted: deep long keys", "60 levels of 1,000-char keys over 49,000 values", {"desired/stack.yaml": deep_long_keys()}),
    ("accepted: 4 MiB tree", "four files of ~1 MB", {
        "desired/stack.yaml": STACK + "values:\n  s: " + "y" * 1_000_000 + "\n",
        "desired/a.yaml": "# " + "z" * 1_040_000 + "\n",
        "desired/b.yaml": "# " + "z" * 1_040_000 + "\n",
        "desired/c.yaml": "# " + "z" * 1_000_000 + "\n"}),
]


def repo(files):
    d = tempfile.mkdtemp(prefix="converge-hostile-")
    os.makedirs(os.path.join(d, "charts/app"))
    with open(os.path.join(d, "charts/app/Chart.yaml"), "w") as f:
        f.write("apiVersion: v2\nname: app\nversion: 0.1.0\n")
    files = dict(files)
    files.setdefault("desired/web.yaml", COMP)
    for path, text in files.items():
        os.makedirs(os.path.dirname(os.path.join(d, path)), exist_ok=True)
        with open(os.path.join(d, path), "w") as f:
            f.write(text)
    git = ["git", "-C", d, "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    subprocess.run(git[:3] + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-qm", "case"], check=True)
    return d


def measure(repo_dir):
    stats = tempfile.mktemp()
    cmd = ["/usr/bin/time", "-f", "%M %e", "-o", stats, "bash", "-c",
           'ulimit -v 4000000; exec "$0" validate --repo "$1"', BIN, repo_dir]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"})
    with open(stats) as f:
        rss_kb, secs = f.read().split()[-2:]
    os.unlink(stats)
    text = out.stdout + out.stderr
    first = next((l for l in text.splitlines() if l.startswith("error") or "panicked" in l or "failed" in l), "")
    return out.returncode, int(rss_kb) / 1024, float(secs), first


def main():
    if not os.path.exists(BIN):
        sys.exit(f"{BIN} not found: cargo build --release --bin converge (or set CONVERGE_BIN)")
    print("hostile bench: no cluster, no node: `converge validate` reads git only", flush=True)
    rows = []
    code, rss, secs, first = measure(ROOT)
    rows.append({"case": "shipped desired/", "what": "baseline", "exit": code, "max_rss_mb": round(rss, 1), "seconds": secs, "first": first})
    for name, what, files in CASES:
        d = repo(files)
        try:
            code, rss, secs, first = measure(d)
        finally:
            shutil.rmtree(d, ignore_errors=True)
        rows.append({"case": name, "what": what, "exit": code, "max_rss_mb": round(rss, 1), "seconds": secs, "first": first})
    print(f"{'case':<28} {'exit':>4} {'max RSS':>9} {'time':>7}  first finding")
    for r in rows:
        print(f"{r['case']:<28} {r['exit']:>4} {r['max_rss_mb']:>7.1f}MB {r['seconds']:>6.2f}s  {r['first'][:90]}")
    os.makedirs(os.path.join(ROOT, "target"), exist_ok=True)
    with open(os.path.join(ROOT, "target/hostile-bench.json"), "w") as f:
        json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
