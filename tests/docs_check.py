#!/usr/bin/env python3
"""The documentation cannot drift from the code: two checks, stdlib only.

names  Every public name declared in include/xiio.hpp and include/xiio/*.hpp (not in
       include/xiio/detail/, not in a `detail` namespace, not in a private or protected
       section) has an entry in docs/reference.md. The names: classes, structs, enums,
       aliases, free functions, public member functions and data members of public
       classes, enumerators. Constructors, destructors, operators, friends and the
       coroutine protocol (await_ready, await_suspend, await_resume, promise_type) are not
       names of their own.
       ENTRY RULE: the name, qualified by its enclosing classes (`Queue::put`,
       `Lock::Guard::unlock`; a namespace-level name bare: `gather`), appears as a whole
       identifier path inside an inline code span or a ```text block of the section of
       docs/reference.md that documents its header: the `## ` heading whose text names the
       header (`xiio/net.hpp`) and everything up to the next `## ` heading.

links  Every relative link of every Markdown file (git ls-files '*.md' at the repository's
       top level, else every *.md below the root) resolves to a file or directory inside
       the root, and every #anchor (same file or another .md) names a heading, by GitHub's
       slug rules (lowercase; punctuation other than - and _ dropped; spaces to -; a
       repeated slug gets -1, -2, ...). http(s) and mailto links are not fetched.

Usage: docs_check.py [--root DIR] [--exclude RELDIR]...
Prints every problem and exits 1 if there is one.
"""

import argparse
import os
import re
import subprocess
import sys

PROTOCOL = {"await_ready", "await_suspend", "await_resume", "promise_type"}
SKIP_STATEMENT_KEYWORDS = {"friend", "static_assert", "typedef_"}


# ---------------------------------------------------------------------------------------
# C++: the public names of a header


def strip_code(text):
    """Removes comments, string and character literals, and preprocessor lines."""
    out = []
    i, n = 0, len(text)
    at_line_start = True
    while i < n:
        c = text[i]
        if at_line_start and c == "#":
            # a directive, with its continuation lines
            while i < n and text[i] != "\n":
                if text[i] == "\\" and i + 1 < n and text[i + 1] == "\n":
                    i += 2
                    continue
                i += 1
            continue
        if c == "/" and text.startswith("//", i):
            while i < n and text[i] != "\n":
                i += 1
            continue
        if c == "/" and text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
            out.append(" ")
            continue
        if c == "R" and text.startswith('R"', i):
            m = re.match(r'R"([^(\s]*)\(', text[i:])
            if m:
                end = text.find(")" + m.group(1) + '"', i)
                i = n if end < 0 else end + len(m.group(1)) + 2
                out.append('""')
                continue
        if c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            # a digit separator (1'000) is no character literal
            if c == "'" and i > 0 and text[i - 1].isalnum():
                out.append(" ")
                i += 1
                continue
            out.append(c + c)
            i = j + 1
            continue
        if c == "\n":
            at_line_start = True
        elif not c.isspace():
            at_line_start = False
        out.append(c)
        i += 1
    return "".join(out)


TOKEN = re.compile(r"[A-Za-z_]\w*|::|->|\[\[|\]\]|\d[\w.']*|\S")


def tokens(code):
    return TOKEN.findall(code)


def is_ident(t):
    return re.fullmatch(r"[A-Za-z_]\w*", t) is not None


def skip_balanced(toks, i, open_, close):
    """toks[i] is `open_`: the index after its matching `close`."""
    depth = 0
    while i < len(toks):
        if toks[i] == open_:
            depth += 1
        elif toks[i] == close:
            depth -= 1
            if depth == 0:
                return i + 1
        elif open_ == "<" and toks[i] == ">>":
            depth -= 2
            if depth <= 0:
                return i + 1
        i += 1
    return i


def clean_statement(st):
    """Drops attributes, template headers, requires-clauses and leading specifiers."""
    out = []
    i = 0
    while i < len(st):
        t = st[i]
        if t == "[[":
            while i < len(st) and st[i] != "]]":
                i += 1
            i += 1
            continue
        if t == "template" and i + 1 < len(st) and st[i + 1] == "<":
            i = skip_balanced(st, i + 1, "<", ">")
            continue
        if t == "requires" and not any(x == "(" for x in out):
            # the clause before a declaration: (expr) or a concept-id, maybe with <...>
            i += 1
            if i < len(st) and st[i] == "(":
                i = skip_balanced(st, i, "(", ")")
            else:
                while i < len(st) and (is_ident(st[i]) or st[i] == "::"):
                    i += 1
                if i < len(st) and st[i] == "<":
                    i = skip_balanced(st, i, "<", ">")
            continue
        out.append(t)
        i += 1
    return out


class Scope:
    def __init__(self, kind, name="", public=True, skipped=False):
        self.kind = kind  # namespace, class, enum, body
        self.name = name
        self.public = public
        self.skipped = skipped


def public_names(path):
    """[(qualified name, kind)] declared public in `path`, outside namespace detail."""
    toks = tokens(strip_code(open(path, encoding="utf-8").read()))
    names = []
    stack = [Scope("namespace", "", skipped=True)]  # the global namespace: not ours
    st = []  # tokens of the statement being read

    def prefix():
        return "::".join(s.name for s in stack if s.kind in ("class", "enum") and s.name)

    def visible():
        if len(stack) == 1:
            return False  # the global namespace: not ours
        for s in stack[1:]:
            if s.skipped or (s.kind == "class" and not s.public):
                return False
        return True

    def add(name, kind):
        if name in PROTOCOL or not name:
            return
        p = prefix()
        names.append(((p + "::" + name) if p else name, kind))

    def declarator_names(st):
        """Names a member/variable declaration statement declares (split at commas)."""
        parts, cur, depth = [], [], 0
        for t in st:
            if t in "(<[{":
                depth += 1
            elif t in ")>]}":
                depth -= 1
            elif t == ">>":
                depth -= 2
            if t == "," and depth == 0:
                parts.append(cur)
                cur = []
            else:
                cur.append(t)
        parts.append(cur)
        result = []
        for p in parts:
            if "=" in p:
                p = p[: p.index("=")]
            if ":" in p:  # a bit-field
                p = p[: p.index(":")]
            if "[" in p:
                p = p[: p.index("[")]
            ids = [t for t in p if is_ident(t)]
            if ids:
                result.append(ids[-1])
        return result

    def function_name(st):
        """The declared name of a function declaration, or None (operator, ctor, dtor)."""
        if "operator" in st[: st.index("(") + 1] if "(" in st else False:
            return None
        for k, t in enumerate(st):
            if t == "(":
                if k == 0 or not is_ident(st[k - 1]):
                    return None
                if st[k - 1] in ("decltype", "noexcept", "alignas", "sizeof", "alignof"):
                    continue
                if k >= 2 and st[k - 2] in ("~", "::"):
                    return None  # a destructor, or a member defined out of its class
                return st[k - 1]
        return None

    def statement_end(st, opens_body):
        """Handles a complete statement; returns the Scope that `{` opens, if any."""
        st = clean_statement(st)
        while st and st[0] in ("public", "private", "protected") and len(st) > 1 and st[1] == ":":
            st = st[2:]
        if not st:
            return Scope("body", skipped=True) if opens_body else None
        head = st[0]
        if head == "namespace":
            name = "".join(t for t in st[1:] if t not in ("{", "inline"))
            parts = name.split("::")
            if len(stack) == 1:  # at global scope: only namespace xiio is ours
                skip = parts[0] != "xiio" or "detail" in parts
            else:
                skip = stack[-1].skipped or "detail" in parts
            return Scope("namespace", name, skipped=skip)
        if head in ("using",):
            if visible() and "=" in st and st[1] != "namespace":
                add(st[1], "alias")
            return Scope("body", skipped=True) if opens_body else None
        if head in SKIP_STATEMENT_KEYWORDS or head == "extern":
            return Scope("body", skipped=True) if opens_body else None
        keyword = next((t for t in st if t in ("class", "struct", "union", "enum")), None)
        paren = "(" in st
        if keyword and (not paren or st.index(keyword) < st.index("(")):
            k = st.index(keyword)
            rest = [t for t in st[k + 1 :] if t not in ("class", "struct")]  # enum class
            name = rest[0] if rest and is_ident(rest[0]) else ""
            if name in ("final",):
                name = ""
            if not opens_body:  # a forward declaration: documented where it is defined
                return None
            if visible() and name:
                add(name, keyword)
            if keyword == "enum":
                return Scope("enum", name, skipped=not visible())
            return Scope("class", name, public=keyword != "class", skipped=not visible())
        if "operator" in st:  # operators (and conversions) are no names of their own
            return Scope("body", skipped=True) if opens_body else None
        if paren and not ("=" in st and st.index("=") < st.index("(")):
            if visible() and stack[-1].kind in ("namespace", "class"):
                fname = function_name(st)
                if fname and not (stack[-1].kind == "class" and fname == stack[-1].name):
                    add(fname, "function")
            return Scope("body", skipped=True) if opens_body else None
        # a variable or data member (a `{` here starts a braced initializer)
        if visible() and stack[-1].kind in ("namespace", "class"):
            if head not in ("return",):
                for name in declarator_names(st):
                    add(name, "data")
        return Scope("body", skipped=True) if opens_body else None

    i = 0
    while i < len(toks):
        t = toks[i]
        top = stack[-1]
        if top.kind == "body":
            # skip a function body entirely
            if t == "{":
                stack.append(Scope("body", skipped=True))
            elif t == "}":
                stack.pop()
                st = []
            i += 1
            continue
        if top.kind == "enum":
            if t == "}":
                stack.pop()
                st = []
            elif not top.skipped and is_ident(t) and (i == 0 or toks[i - 1] in ("{", ",")):
                add(t, "enumerator")
            i += 1
            continue
        if t in ("public", "private", "protected") and i + 1 < len(toks) and toks[i + 1] == ":":
            if top.kind == "class":
                top.public = t == "public"
            st = []
            i += 2
            continue
        if t == ";":
            statement_end(st, False)
            st = []
        elif t == "{":
            depth = sum(1 if x == "(" else -1 if x == ")" else 0 for x in st)
            if depth > 0 or is_initializer(st):  # a braced initializer: part of the statement
                j = skip_balanced(toks, i, "{", "}")
                st.extend(toks[i:j])
                i = j
                continue
            stack.append(statement_end(st, True))
            st = []
        elif t == "}":
            stack.pop()
            st = []
        else:
            st.append(t)
        i += 1
    return names


def is_initializer(st):
    """Whether a `{` after `st` opens a braced initializer (not a scope or a body)."""
    st = clean_statement(st)
    if not st or st[0] in ("namespace", "extern") or "operator" in st:
        return False
    eq = st.index("=") if "=" in st else None
    par = st.index("(") if "(" in st else None
    if eq is not None and (par is None or eq < par):
        return True  # `x = {...}`, `f = [] {...}`
    if any(t in ("class", "struct", "union", "enum") for t in st):
        return False
    return par is None  # `T x{...}`


# ---------------------------------------------------------------------------------------
# Markdown


FENCE = re.compile(r"^(\s*)(```+|~~~+)(.*)$")


def md_blocks(text):
    """Yields (kind, tag, lines): kind 'text' for prose, 'fence' for fenced blocks."""
    prose, block, fence, tag = [], [], None, ""
    for line in text.split("\n"):
        m = FENCE.match(line)
        if fence is None and m:
            if prose:
                yield "text", "", prose
            prose, block, fence, tag = [], [], m.group(2), m.group(3).strip()
        elif fence is not None and m and m.group(2).startswith(fence) and not m.group(3).strip():
            yield "fence", tag, block
            fence = None
        elif fence is not None:
            block.append(line)
        else:
            prose.append(line)
    if fence is not None:
        yield "fence", tag, block
    elif prose:
        yield "text", "", prose


def slug(heading):
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links: their text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text):
    seen = {}
    result = set()
    for kind, _, lines in md_blocks(text):
        if kind != "text":
            continue
        for line in lines:
            m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
            if not m:
                continue
            s = slug(m.group(1))
            if s in seen:
                seen[s] += 1
                result.add(f"{s}-{seen[s]}")
            else:
                seen[s] = 0
                result.add(s)
    return result


LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFDEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")


def links(text):
    """(line number, target) of every inline link and link definition outside code."""
    result = []
    lineno = 0
    for kind, _, lines in md_blocks(text):
        if kind == "fence":
            lineno += len(lines) + 2
            continue
        for line in lines:
            lineno += 1
            prose = re.sub(r"(`+)(.+?)\1", "", line)  # inline code is no link
            for m in LINK.finditer(prose):
                result.append((lineno, m.group(1)))
            m = REFDEF.match(prose)
            if m:
                result.append((lineno, m.group(1)))
    return result


def markdown_files(root, excludes):
    files = None
    try:
        top = subprocess.run(
            ["git", "-C", root, "rev-parse", "--show-toplevel"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        if os.path.realpath(top) == os.path.realpath(root):
            out = subprocess.run(
                ["git", "-C", root, "ls-files", "*.md"],
                capture_output=True, text=True, check=True,
            ).stdout
            files = [f for f in out.split("\n") if f]
    except (OSError, subprocess.CalledProcessError):
        pass
    if files is None:
        files = []
        for d, dirs, fs in os.walk(root):
            dirs[:] = [x for x in dirs if not x.startswith(".") and x != "build"]
            for f in fs:
                if f.endswith(".md"):
                    files.append(os.path.relpath(os.path.join(d, f), root))
    return sorted(
        f for f in files
        if not any(f == e or f.startswith(e.rstrip("/") + "/") for e in excludes)
    )


def check_links(root, excludes):
    problems = []
    root_real = os.path.realpath(root)
    cache = {}
    for md in markdown_files(root, excludes):
        path = os.path.join(root, md)
        text = open(path, encoding="utf-8").read()
        for lineno, target in links(text):
            if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):
                continue  # http(s), mailto: not fetched
            where = f"{md}:{lineno}"
            file_part, _, anchor = target.partition("#")
            if file_part:
                if file_part.startswith("/"):
                    problems.append(f"dead link: {where}: {target} (absolute path)")
                    continue
                dest = os.path.realpath(os.path.join(os.path.dirname(path), file_part))
                if dest != root_real and not dest.startswith(root_real + os.sep):
                    problems.append(f"dead link: {where}: {target} (leaves the repository)")
                    continue
                if not os.path.exists(dest):
                    problems.append(f"dead link: {where}: {target} (no such file)")
                    continue
            else:
                dest = os.path.realpath(path)
            if anchor:
                if not dest.endswith(".md") or os.path.isdir(dest):
                    problems.append(f"dead anchor: {where}: {target} (not a Markdown file)")
                    continue
                if dest not in cache:
                    cache[dest] = anchors(open(dest, encoding="utf-8").read())
                if anchor not in cache[dest]:
                    problems.append(f"dead anchor: {where}: {target}")
    return problems


# ---------------------------------------------------------------------------------------
# The reference


def reference_sections(text):
    """{header name ('net'): [code strings]} from the `## ` sections naming a header."""
    sections = {}
    current = None
    for kind, tag, lines in md_blocks(text):
        if kind == "fence":
            if current is not None and tag in ("text", "cpp", "c++", ""):
                sections[current].append("\n".join(lines))
            continue
        for line in lines:
            m = re.match(r"^##\s+(.*)$", line)
            if m:
                h = re.search(r"xiio(?:/([\w]+))?\.hpp", m.group(1))
                current = (h.group(1) or "xiio") if h else None
                if current is not None:
                    sections.setdefault(current, [])
                continue
            if current is not None:
                sections[current].extend(c for _, c in re.findall(r"(`+)(.+?)\1", line))
    return sections


def documented(name, codes):
    pattern = re.compile(r"(?<![\w:])" + re.escape(name) + r"(?![\w])")
    return any(pattern.search(c) for c in codes)


def check_names(root):
    problems = []
    ref_path = os.path.join(root, "docs", "reference.md")
    if not os.path.exists(ref_path):
        return ["no docs/reference.md"], 0
    sections = reference_sections(open(ref_path, encoding="utf-8").read())
    headers = []
    if os.path.exists(os.path.join(root, "include", "xiio.hpp")):
        headers.append(("xiio", os.path.join(root, "include", "xiio.hpp")))
    part_dir = os.path.join(root, "include", "xiio")
    if os.path.isdir(part_dir):
        for f in sorted(os.listdir(part_dir)):
            if f.endswith(".hpp"):
                headers.append((f[:-4], os.path.join(part_dir, f)))
    count = 0
    for header, path in headers:
        names = public_names(path)
        seen = set()
        for name, kind in names:
            if name in seen:
                continue
            seen.add(name)
            count += 1
            if header not in sections:
                problems.append(
                    f"undocumented: {name} ({kind}, include/xiio/{header}.hpp): "
                    f"docs/reference.md has no section for xiio/{header}.hpp"
                )
            elif not documented(name, sections[header]):
                problems.append(
                    f"undocumented: {name} ({kind}, include/xiio/{header}.hpp): "
                    f"no `{name}` in its section of docs/reference.md"
                )
    return problems, count


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ap.add_argument("--exclude", action="append", default=[],
                    help="a directory (relative to the root) whose .md files are skipped")
    ap.add_argument("--list-names", action="store_true", help="print the names found")
    args = ap.parse_args()
    if args.list_names:
        part_dir = os.path.join(args.root, "include", "xiio")
        for f in sorted(os.listdir(part_dir)):
            if f.endswith(".hpp"):
                for name, kind in public_names(os.path.join(part_dir, f)):
                    print(f"{f[:-4]}\t{kind}\t{name}")
        return 0
    name_problems, count = check_names(args.root)
    link_problems = check_links(args.root, args.exclude)
    for p in name_problems + link_problems:
        print(p)
    print(f"docs_check: {count} public names checked against docs/reference.md, "
          f"{len(name_problems)} undocumented; {len(link_problems)} bad links")
    if name_problems or link_problems:
        print("docs_check: FAILED")
        return 1
    print("docs_check: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
