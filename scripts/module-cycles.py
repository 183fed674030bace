#!/usr/bin/env python3
"""Module dependency cycles inside each crate of a workspace (`scripts/module-cycles.py [crates]`).

An edge A -> B when the code of module A (comments and strings stripped, test modules left
out) names a path into module B: crate::..., super::..., self::..., or a child module of A. A
name a module re-exports (`pub use`) counts as the module that defines it, and the `pub use`
itself is no edge: a module's re-exports are its interface, not a dependency. Declaring a
child (`mod x;`) is no edge either. Prints each strongly connected component of more than
one module and exits 1 if there is one."""
import os, re, sys

def strip(src):
    src = re.sub(r'//[^\n]*', '', src)
    src = re.sub(r'/\*.*?\*/', '', src, flags=re.S)
    src = re.sub(r'\br#+"(?:.|\n)*?"#+', '""', src)
    src = re.sub(r'"(?:\\.|[^"\\])*"', '""', src)
    src = re.sub(r"'(?:\\.|[^'\\])'", "''", src)
    return re.split(r'#\[cfg\(test\)\]\s*(?:pub(?:\(crate\))?\s+)?mod tests', src)[0]

def modules(src):
    mods = {}
    for dp, _, fs in os.walk(src):
        for f in fs:
            if f.endswith('.rs'):
                rel = os.path.relpath(os.path.join(dp, f), src)[:-3].split(os.sep)
                if rel[-1] in ('mod', 'lib', 'main'):
                    rel = rel[:-1]
                mods[tuple(rel)] = os.path.join(dp, f)
    return mods

USE = re.compile(r'\b(pub(?:\([^)]*\))?\s+)?use\s+([^;]+);')
PATH = re.compile(r'(?<![\w:])(\w+)((?:::\w+)+)')

def absolute(m, segs, mods):
    """The absolute path `segs` names in module `m`, or None if it is not into this crate."""
    head = segs[0]
    if head == 'crate':
        return list(segs[1:])
    if head == 'self':
        return list(m) + list(segs[1:])
    if head == 'super':
        base, i = list(m), 0
        while i < len(segs) and segs[i] == 'super':
            base, i = base[:-1], i + 1
        return base + list(segs[i:])
    if tuple(m) + (head,) in mods:
        return list(m) + list(segs)
    return None

def expand(tree):
    """`a::{b, c::{d, e}}` -> [[a,b],[a,c,d],[a,c,e]] (aliases are removed before)."""
    tree = re.sub(r'\s+', '', tree)
    def go(prefix, t):
        out, depth, cur, parts = [], 0, '', []
        if '{' not in t:
            return [prefix + [s for s in t.split('::') if s]]
        i = t.index('{')
        pre = [s for s in t[:i].split('::') if s]
        inner = t[i + 1:t.rindex('}')]
        for ch in inner:
            if ch == ',' and depth == 0:
                parts.append(cur); cur = ''
                continue
            depth += ch == '{'
            depth -= ch == '}'
            cur += ch
        parts.append(cur)
        for part in parts:
            if part:
                out += go(prefix + pre, part)
        return out
    return go([], tree)

def main(root):
    bad = False
    for crate in sorted(os.listdir(root)):
        src = os.path.join(root, crate, 'src')
        if not os.path.isdir(src):
            continue
        mods = modules(src)
        code = {m: strip(open(p).read()) for m, p in mods.items()}
        reexport = {}
        for m, c in code.items():
            for u in USE.finditer(c):
                if not u.group(1):
                    continue
                for segs in expand(re.sub(r'\s+as\s+\w+', '', u.group(2))):
                    a = absolute(m, segs, mods)
                    if a and segs[-1] != '*':
                        reexport[(m, segs[-1])] = a
        def resolve(path, seen=0):
            for n in range(len(path), -1, -1):
                t = tuple(path[:n])
                if t in mods:
                    if n < len(path) and (t, path[n]) in reexport and seen < 8:
                        return resolve(reexport[(t, path[n])], seen + 1)
                    return t
            return ()
        edges = {m: set() for m in mods}
        for m, c in code.items():
            for u in USE.finditer(c):
                if not u.group(1):
                    for segs in expand(re.sub(r'\s+as\s+\w+', '', u.group(2))):
                        a = absolute(m, segs, mods)
                        if a is not None:
                            edges[m].add(resolve(a))
            body = USE.sub('', c)
            for p in PATH.finditer(body):
                segs = [p.group(1)] + p.group(2).split('::')[1:]
                a = absolute(m, segs, mods)
                if a is not None:
                    edges[m].add(resolve(a))
            edges[m].discard(m)
        index, low, stack, on, comps = {}, {}, [], set(), []
        sys.setrecursionlimit(10000)
        def visit(v):
            index[v] = low[v] = len(index)
            stack.append(v); on.add(v)
            for w in edges[v]:
                if w not in index:
                    visit(w); low[v] = min(low[v], low[w])
                elif w in on:
                    low[v] = min(low[v], index[w])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop(); on.discard(w); comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    comps.append(comp)
        for v in edges:
            if v not in index:
                visit(v)
        name = lambda m: '::'.join(m) or '(crate root)'
        for comp in comps:
            bad = True
            print(f"{crate}: cycle among {', '.join(sorted(map(name, comp)))}")
            for v in comp:
                for w in sorted(edges[v]):
                    if w in comp:
                        print(f"    {name(v)} -> {name(w)}")
        print(f"{crate}: {len(mods)} modules, {sum(len(e) for e in edges.values())} edges")
    print("cycles found" if bad else "no module cycles")
    return 1 if bad else 0

sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "crates"))
