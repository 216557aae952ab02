#!/usr/bin/env python3
"""Evaluation and calibration text from the Wikipedia dump in data/text/enwiki-shortened.xml.bz2.

Strips the wiki markup of every article to plain text and splits the articles into two disjoint
sets, written as data/text/wiki.calib.txt and data/text/wiki.eval.txt. The procedure defines the
benchmark: it is documented step by step in docs/EVALUATION.md; change both together (and bump
FORMAT_VERSION, which is stored beside the outputs so that setup rebuilds them).

Idempotent: does nothing when the outputs exist and were made by this FORMAT_VERSION from the same
input. Usage: prepare_text.py [--input FILE] [--out-dir DIR]
"""
import argparse
import bz2
import hashlib
import html
import os
import re
import sys
import tempfile
import xml.etree.ElementTree as ET

FORMAT_VERSION = 1
CALIBRATION_EVERY = 4  # article k (0-based, in file order) is calibration text when k % 4 == 3

# Elements whose content is not prose: removed with their content.
DROPPED_ELEMENTS = ("ref", "math", "chem", "gallery", "timeline", "imagemap", "score",
                    "syntaxhighlight", "source", "references")
# Link namespaces that are not prose: such links are removed with their caption.
DROPPED_LINK_NAMESPACES = ("file", "image", "media", "category")
# Trailing apparatus sections, removed with everything up to the next heading of the same or a
# higher level.
DROPPED_SECTIONS = ("references", "notes", "footnotes", "citations", "sources", "bibliography",
                    "see also", "external links", "further reading", "notes and references")

HEADING = re.compile(r"^(=+)\s*(.*?)\s*\1\s*$")


def remove_nested(text, pattern):
    """Removes innermost matches of `pattern` until none is left (templates, tables nest)."""
    while True:
        text, count = pattern.subn("", text)
        if count == 0:
            return text


def replace_link(match):
    inner = match.group(1)
    target, _, label = inner.partition("|")
    namespace, colon, _ = target.partition(":")
    ns = namespace.strip().lower()
    if colon and ns in DROPPED_LINK_NAMESPACES:
        return ""
    # Interlanguage links ([[de:Anarchismus]]): a language-code prefix and no caption.
    if colon and not label and re.fullmatch(r"[a-z]{2,3}(-[a-z]+)*|simple", namespace.strip()):
        return ""
    if label:  # [[target|label]] shows label; for [[a|b|c]] (captions) the last part
        return label.rsplit("|", 1)[-1]
    return target.lstrip(":")


def resolve_links(text):
    innermost = re.compile(r"\[\[((?:[^\[\]]|\[(?!\[)|\](?!\]))*)\]\]")  # single brackets may occur
    while True:
        text, count = innermost.subn(replace_link, text)
        if count == 0:
            return text


def drop_apparatus_sections(lines):
    kept, skip_level = [], None
    for line in lines:
        heading = HEADING.match(line)
        if heading:
            level = len(heading.group(1))
            if skip_level is not None and level <= skip_level:
                skip_level = None
            if skip_level is None and heading.group(2).strip().lower() in DROPPED_SECTIONS:
                skip_level = level
        if skip_level is None:
            kept.append(line)
    return kept


def wiki_to_text(title, wikitext):
    """Plain text of one article (docs/EVALUATION.md lists these steps)."""
    t = wikitext
    # 1. comments
    t = re.sub(r"<!--.*?(-->|$)", "", t, flags=re.S)
    # 2. non-prose elements, self-closing ones and with content
    for tag in DROPPED_ELEMENTS:
        t = re.sub(rf"<{tag}\b[^>]*/>", "", t, flags=re.I)
        t = re.sub(rf"<{tag}\b[^>]*>.*?</{tag}\s*>", "", t, flags=re.I | re.S)
    # 3. templates {{...}} and parameters {{{...}}}, innermost first
    t = remove_nested(t, re.compile(r"\{\{[^{}]*\}\}"))
    t = re.sub(r"\{\{.*", "", t)  # a template left unbalanced (literal braces inside): cut the line
    # 4. tables {| ... |}, innermost first
    t = remove_nested(t, re.compile(r"\{\|(?:(?!\{\|).)*?\|\}", re.S))
    # 5. internal links: files/images/categories/interlanguage dropped, [[a|b]] -> b, [[a]] -> a
    t = resolve_links(t)
    # 6. external links: [url label] -> label, [url] -> nothing
    t = re.sub(r"\[(?:https?:|ftp:)?//[^\s\]]+\s+([^\]]*)\]", r"\1", t)
    t = re.sub(r"\[(?:https?:|ftp:)?//[^\s\]]*\]", "", t)
    # 7. remaining HTML tags (their content stays), then bold/italic quotes, magic words
    t = re.sub(r"</?[A-Za-z][^<>]*>", "", t)
    t = re.sub(r"'{2,}", "", t)
    t = re.sub(r"__[A-Z]+__", "", t)
    # 8. character entities (&nbsp; &ndash; &amp; ...), non-breaking spaces as plain spaces
    t = html.unescape(t).replace("\u00a0", " ")
    # 9. line structure: apparatus sections dropped, stray table rows dropped, headings kept as
    #    text, list/indent markers removed, rules removed, spaces collapsed, blank-line runs
    #    collapsed to one
    lines = drop_apparatus_sections(t.split("\n"))
    out = []
    for line in lines:
        if line.startswith(("{|", "|", "!")):  # rows of a table whose opening was cut with a template
            continue
        heading = HEADING.match(line)
        if heading:
            line = heading.group(2)
        else:
            line = re.sub(r"^[*#:;]+\s*", "", line)
        if re.fullmatch(r"-{4,}", line.strip()):
            line = ""
        line = re.sub(r"[ \t]+", " ", line).strip()
        if heading and line:
            out.extend(["", line, ""])
        else:
            out.append(line)
    body = re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip()
    return f"{title}\n\n{body}" if body else ""


def read_articles(path):
    """(title, wikitext) of every main-namespace, non-redirect page, in file order."""
    articles = []
    with bz2.open(path, "rb") as f:
        for _, element in ET.iterparse(f):
            if not element.tag.endswith("}page"):
                continue
            ns = element.findtext("{*}ns")
            title = element.findtext("{*}title") or ""
            text = element.findtext("{*}revision/{*}text") or ""
            redirect = element.find("{*}redirect") is not None or re.match(r"\s*#redirect", text, re.I)
            if ns == "0" and not redirect:
                articles.append((title, text))
            element.clear()
    return articles


def write_atomic(path, text):
    directory = os.path.dirname(os.path.abspath(path))
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=directory, delete=False,
                                     suffix=".tmp") as f:
        f.write(text)
    os.chmod(f.name, 0o644)
    os.replace(f.name, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", default="data/text/enwiki-shortened.xml.bz2")
    parser.add_argument("--out-dir", default="data/text")
    args = parser.parse_args()

    if not os.path.isfile(args.input):
        sys.exit(f"prepare_text: input {args.input} not found (run scripts/setup.sh)")
    with open(args.input, "rb") as f:
        stamp = f"format {FORMAT_VERSION} input sha256 {hashlib.sha256(f.read()).hexdigest()}\n"
    calib = os.path.join(args.out_dir, "wiki.calib.txt")
    evaluation = os.path.join(args.out_dir, "wiki.eval.txt")
    stamp_path = os.path.join(args.out_dir, "wiki.stamp")
    if all(os.path.isfile(p) for p in (calib, evaluation, stamp_path)):
        with open(stamp_path) as f:
            if f.read() == stamp:
                return

    texts = [wiki_to_text(title, body) for title, body in read_articles(args.input)]
    texts = [t for t in texts if t]
    calib_texts = [t for k, t in enumerate(texts) if k % CALIBRATION_EVERY == CALIBRATION_EVERY - 1]
    eval_texts = [t for k, t in enumerate(texts) if k % CALIBRATION_EVERY != CALIBRATION_EVERY - 1]
    os.makedirs(args.out_dir, exist_ok=True)
    write_atomic(calib, "\n\n".join(calib_texts) + "\n")
    write_atomic(evaluation, "\n\n".join(eval_texts) + "\n")
    write_atomic(stamp_path, stamp)
    print(f"[prepare_text] {len(texts)} articles: {len(calib_texts)} calibration "
          f"({sum(map(len, calib_texts))} chars) -> {calib}, {len(eval_texts)} evaluation "
          f"({sum(map(len, eval_texts))} chars) -> {evaluation}")


if __name__ == "__main__":
    main()
