#!/usr/bin/env python3
"""Finds import circles between the modules of each crate.

A module imports another when its code names it: through `crate::`,
`super::` or `self::`, or by the bare name of one of its own child modules
(`body::Body` in `spool/mod.rs`), in a `use` (grouped trees included) or in
a path anywhere in code. Every line of every file is read; comments and
string literals are left out, and so are the bodies of modules compiled
only for tests (`#[cfg(test)] mod tests { ... }`): a test may use anything.

A parent and its child count like any two modules: a `mod.rs` that uses
its child while the child uses something defined (or re-exported) in the
`mod.rs` is a circle. Types both need belong in a child module both use.

Two graphs are checked: modules as files (`smtp::session` ->
`smtp::server`) and top-level modules (`smtp` -> `reload`). Any strongly
connected component of more than one module is a circle; the script prints
each, with one reference per edge so that it can be found, and exits 1.

The engine's layers are checked too: the first table of
`docs/ARCHITECTURE.md` lists its modules bottom to top, and a module may
import only modules on its own row or above it. The order is read from the
document, so the document and the check cannot drift apart.
"""
import os
import re
import sys

CRATES = ["engine/src", "host/src", "policy-guest/src", "gateway/src"]


def modules(root):
    """Module path (tuple) -> file, for every .rs file under root.

    A `main.rs` beside a `lib.rs` is a binary crate of its own that uses the
    library by name, not a module of it: it is left out here and read as a
    crate of one module (see `binaries`).
    """
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            if not f.endswith(".rs"):
                continue
            if f == "main.rs" and dirpath == root and "lib.rs" in files:
                continue
            rel = os.path.relpath(os.path.join(dirpath, f), root)[:-3].split(os.sep)
            if rel[-1] in ("mod", "lib", "main"):
                rel = rel[:-1]
            out[tuple(rel)] = os.path.join(dirpath, f)
    return out


def binaries(root):
    """A `main.rs` beside a `lib.rs`: a crate of one module, which can hold
    no circle but must declare no modules of its own for that to hold."""
    main, lib = os.path.join(root, "main.rs"), os.path.join(root, "lib.rs")
    return [main] if os.path.exists(main) and os.path.exists(lib) else []


def strip(text):
    """The text with comments and string/char literals blanked out.

    Line structure is kept (newlines survive) so that line numbers in
    reports stay right. Lifetimes (`'a`) are told from char literals
    (`'a'`, `'\\n'`) by the closing quote.
    """
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append("\n" * text.count("\n", i, j))
            i = j
            continue
        m = re.match(r'b?r(#*)"', text[i : i + 260])
        if m and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            end = '"' + m.group(1)
            j = text.find(end, i + m.end())
            j = n if j < 0 else j + len(end)
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j
            continue
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j + 1
            continue
        if c == "'":
            m = re.match(r"'(\\.[^']*|[^\\'])'", text[i : i + 12])
            if m:
                out.append("' '")
                i += m.end()
                continue
        out.append(c)
        i += 1
    return "".join(out)


def drop_test_modules(text):
    """The text without the bodies of `#[cfg(test)]` inline modules."""
    pattern = re.compile(r"#\[cfg\(test\)\]\s*(?:#\[[^\]]*\]\s*)*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*\{")
    while True:
        m = pattern.search(text)
        if not m:
            return text
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        text = text[: m.start()] + "\n" * text.count("\n", m.start(), j) + text[j:]


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


def references(text, children):
    """(path, line) for every module path the code names.

    `children` are the names of the file's own child modules: a path that
    starts with one of them (`body::Body`) names it without `self::`.
    """
    # Paths serde is given as strings are references too.
    attribute_paths = re.findall(
        r'\b(?:default|with|deserialize_with|serialize_with)\s*=\s*"([\w:]+)"', text
    )
    text = drop_test_modules(strip(text))
    # `pub(in crate::config)` says who may see an item, not what it uses.
    text = re.sub(r"\bpub\s*\(\s*in\s+[\w:]+\s*\)", "pub", text)
    heads = ["crate", "super", "self"] + sorted(children)
    head = "(?:" + "|".join(map(re.escape, heads)) + ")"
    line_of = lambda pos: text.count("\n", 0, pos) + 1
    found = [(p, 0) for p in attribute_paths if re.match(head + "::", p)]
    for m in re.finditer(r"\buse\s+(" + head + r"::[^;]*);", text, re.S):
        # `use a::b as c` names `a::b`: the alias goes before the spaces do.
        tree = re.sub(r"\s+as\s+\w+", "", m.group(1))
        for p in expand(re.sub(r"\s+", "", tree)):
            found.append((p, line_of(m.start())))
    for m in re.finditer(r"(?<![\w:])(" + head + r"(?:::[A-Za-z_][A-Za-z0-9_]*)+)", text):
        found.append((m.group(1), line_of(m.start())))
    return found


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


def layers(root):
    """Module path (tuple) -> row, from the first table of ARCHITECTURE.md."""
    with open(os.path.join(root, "docs", "ARCHITECTURE.md"), encoding="utf-8") as f:
        doc = f.read()
    table = re.search(r"\| module \| what \|\n\|---\|---\|\n((?:\|.*\n)+)", doc)
    rank = {}
    for row, line in enumerate(table.group(1).splitlines()):
        cell = line.split("|")[1]
        for m in re.findall(r"`([\w:]+)`", cell):
            rank[tuple(m.split("::"))] = row
    return rank


def rank_of(mod, rank):
    """The row of the longest listed prefix of `mod`, if any."""
    for i in range(len(mod), 0, -1):
        if mod[:i] in rank:
            return rank[mod[:i]]
    return None


def unlisted(mods, rank):
    """Engine modules the table has no row for. A module whose children
    have rows (`policy`, which re-exports them) takes the highest of them."""
    out = []
    for mod in mods:
        if not mod or rank_of(mod, rank) is not None:
            continue
        below = [r for m, r in rank.items() if m[: len(mod)] == mod]
        if below:
            rank[mod] = max(below)
        else:
            out.append(f"{name(mod)} has no row in docs/ARCHITECTURE.md's module table")
    return out


def layer_violations(files, where, rank):
    out = []
    for a, targets in files.items():
        ra = rank_of(a, rank)
        for b in targets:
            rb = rank_of(b, rank)
            if ra is not None and rb is not None and rb > ra:
                out.append(f"{name(a)} imports {name(b)}, listed below it  ({where[(a, b)]})")
    return sorted(out)


def name(mod):
    if isinstance(mod, str):
        return mod
    return "::".join(mod) or "crate"


def main():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    found, lines_read = 0, 0
    for crate in CRATES:
        mods = modules(os.path.join(root, crate))
        files, top, where = {}, {}, {}
        for mod, path in mods.items():
            with open(path, encoding="utf-8") as f:
                text = f.read()
            lines_read += text.count("\n")
            children = {m[-1] for m in mods if len(m) == len(mod) + 1 and m[: len(mod)] == mod}
            for ref, line in references(text, children):
                target = resolve(ref, mod, mods)
                if target is None or target == mod:
                    continue
                files.setdefault(mod, set()).add(target)
                where.setdefault((mod, target), f"{os.path.relpath(path, root)}:{line}: {ref}")
                if mod and target and mod[0] != target[0]:
                    top.setdefault(mod[0], set()).add(target[0])
                    where.setdefault((mod[0], target[0]), where[(mod, target)])
        for path in binaries(os.path.join(root, crate)):
            with open(path, encoding="utf-8") as f:
                text = drop_test_modules(strip(f.read()))
            lines_read += text.count("\n")
            if re.search(r"(?m)^\s*(?:pub\s+)?mod\s+\w+\s*;", text):
                found += 1
                print(f"{crate}: {os.path.relpath(path, root)} declares modules: not checked")
        if crate == "engine/src":
            rank = layers(root)
            for v in unlisted(mods, rank) + layer_violations(files, where, rank):
                found += 1
                print(f"{crate}: layer order: {v}")
        for kind, graph in (("module", files), ("top-level module", top)):
            for comp in sccs(graph):
                found += 1
                members = set(comp)
                print(f"{crate}: {kind} circle: {' <-> '.join(sorted(map(name, comp)))}")
                for a in sorted(comp, key=name):
                    for b in sorted(graph.get(a, ()), key=name):
                        if b in members:
                            print(f"    {name(a)} -> {name(b)}  ({where[(a, b)]})")
    if found:
        sys.exit(1)
    print(f"no import circles in {', '.join(CRATES)} ({lines_read} lines read)")


if __name__ == "__main__":
    main()
