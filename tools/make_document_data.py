#!/usr/bin/env python3
"""Generates the document-loader test files in tests/data/documents/.

Text in several encodings, and PDFs made with Debian tools: `groff -Tpdf` (package groff) for a
two-page document, `qpdf --encrypt` (package qpdf) for a password-protected copy, and a damaged
copy (the file cut in half, its cross-reference table gone). Run from the repository root.
"""
import pathlib
import subprocess

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "data" / "documents"

TEXT = "Café déjà vu — 東京 🚀\nsecond line\n"

GROFF_SOURCE = r""".pl 3i
.ll 5i
Page one says hello.
.br
Second line with caf\[e aa].
.bp
Page two talks about lightning attention.
"""


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "utf8.md").write_bytes(("# Title\n\n" + TEXT).encode("utf-8"))
    (OUT / "utf8-bom.txt").write_bytes(b"\xef\xbb\xbf" + TEXT.encode("utf-8"))
    (OUT / "utf16le-bom.txt").write_bytes(b"\xff\xfe" + TEXT.encode("utf-16-le"))
    (OUT / "utf16be-bom.txt").write_bytes(b"\xfe\xff" + TEXT.encode("utf-16-be"))
    (OUT / "latin1.txt").write_bytes("Café au lait, naïve façade, £5 ±1\n".encode("latin-1"))
    # Mostly UTF-8 with a few broken sequences: read as UTF-8 with U+FFFD for the broken bytes.
    (OUT / "utf8-damaged.txt").write_bytes("Café ".encode() + b"\xe2\x82 broken \xff " + "東京\n".encode())
    (OUT / "source.cpp").write_bytes(b"int main() {\n  return 0;  // \xc2\xb5s\n}\n")

    (OUT / "page.html").write_bytes("""<!DOCTYPE html>
<html><head><meta charset="iso-8859-1"><title>Ignored title</title>
<style>p { color: red; }</style></head>
<body><h1>Main   heading</h1>
<p>First paragraph with <b>bold</b> and
   a <a href="x">link</a> &amp; an entity: caf&eacute; &#x6771;&#x4EAC;.</p>
<script>var hidden = 1;</script>
<ul><li>one</li><li>two</li></ul>
<h2>Code</h2><pre>  indented
    more</pre>
<p>Latin-1 byte: été<br>after break</p>
</body></html>
""".encode("latin-1"))

    pdf = subprocess.run(["groff", "-Tpdf", "-P-p3i,6i"], input=GROFF_SOURCE.encode(), check=True,
                         capture_output=True).stdout
    (OUT / "two-pages.pdf").write_bytes(pdf)
    subprocess.run(["qpdf", "--encrypt", "user-secret", "owner-secret", "256", "--",
                    str(OUT / "two-pages.pdf"), str(OUT / "encrypted.pdf")], check=True)
    (OUT / "damaged.pdf").write_bytes(b"%PDF-1.4\n" + b"\x00garbage, not a PDF body\n" * 20)
    (OUT / "truncated.pdf").write_bytes(pdf[: len(pdf) // 4])


if __name__ == "__main__":
    main()
