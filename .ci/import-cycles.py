#!/usr/bin/env python3
"""Finds import circles between the modules of each crate.

A module imports another when its source names it through `crate::`,
`super::` or `self::` (in a `use`, a path in code, or a grouped
`use crate::{a, b::c}`). Two graphs are checked: modules as files
(`smtp::session` -> `smtp::server`) and top-level modules (`smtp` ->
`reload`). Any strongly connected component of more than one module is a
circle; the script prints each and exits 1. Test modules (`#[cfg(test)]`
and everything after it in a file) are left out: a test may use anything.
"""
import os
import re
import sys

CRATES = ["engine/src", "host/src", "policy-guest/src"]


def modules(root):
    """Module path (tuple) -> file, for every .rs file under root."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            if not f.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, f), root)[:-3].split(os.sep)
            if rel[-1] in ("mod", "lib", "main"):
                rel = rel[:-1]
            out[tuple(rel)] = os.path.join(dirpath, f)
    return out


def expand(path):
    """`crate::{a, b::{c, d}}` -> ['crate::a', 'crate::b::c', 'crate::b::d']."""
    m = re.match(r"^(.*?)::\{(.*)\}$", path, re.S)
    if not m:
        return [path]
    head, body = m.group(1), m.group(2)
    parts, depth, cur = [], 0, ""
    for ch in body:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    parts.append(cur)
    out = []
    for p in parts:
        p = p.strip()
        if p and p != "self":
            out.extend(expand(f"{head}::{p}"))
        elif p == "self":
            out.append(head)
    return out


def references(text):
    """Every `crate::`/`super::`/`self::` path in the non-test part of text."""
    text = text.split("#[cfg(test)]")[0]
    text = re.sub(r"//.*", "", text)
    paths = []
    for m in re.finditer(r"\buse\s+((?:crate|super|self)::[^;]*);", text, re.S):
        paths.extend(expand(re.sub(r"\s+", "", m.group(1))))
    for m in re.finditer(r"\b((?:crate|super|self)(?:::[A-Za-z_][A-Za-z0-9_]*)+)", text):
        paths.append(m.group(1))
    return paths


def resolve(path, here, mods):
    """The module a path names (the longest prefix that is a module file)."""
    segs = path.split("::")
    if segs[0] == "crate":
        base, rest = (), segs[1:]
    else:
        base = list(here)
        while segs and segs[0] in ("super", "self"):
            if segs[0] == "super":
                base = base[:-1]
            segs = segs[1:]
        base, rest = tuple(base), segs
    best = None
    for i in range(len(rest) + 1):
        cand = base + tuple(rest[:i])
        if cand in mods:
            best = cand
    return best


def sccs(graph):
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(comp)

    sys.setrecursionlimit(10000)
    for v in list(graph):
        if v not in index:
            visit(v)
    return [c for c in out if len(c) > 1]


def main():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    found = 0
    for crate in CRATES:
        mods = modules(os.path.join(root, crate))
        files, top = {}, {}
        for mod, path in mods.items():
            with open(path, encoding="utf-8") as f:
                text = f.read()
            for ref in references(text):
                target = resolve(ref, mod, mods)
                if target is None or target == mod or target == ():
                    continue
                # A module naming its own descendants is its business.
                if target[: len(mod)] == mod:
                    continue
                files.setdefault(mod, set()).add(target)
                if mod and target and mod[0] != target[0]:
                    top.setdefault(mod[0], set()).add(target[0])
        for name, graph in (("module", files), ("top-level module", top)):
            for comp in sccs(graph):
                found += 1
                names = sorted("::".join(c) if isinstance(c, tuple) else c for c in comp)
                print(f"{crate}: {name} circle: {' <-> '.join(names)}")
    if found:
        sys.exit(1)
    print("no import circles in " + ", ".join(CRATES))


if __name__ == "__main__":
    main()
