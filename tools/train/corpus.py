"""Builds the filler corpus from texts Debian ships: one ASCII paragraph per line.

Sources: the King James Bible (package bible-kjv, printed with its `bible` program, verse numbers
dropped so that the only numbers in a haystack are the ones the tasks put there) and the fortune
cookies (fortunes-min, fortunes). The result is deterministic for given package versions.

    python3 tools/train/corpus.py OUT.txt
"""
import pathlib
import re
import subprocess
import sys

FORTUNE_DIR = pathlib.Path("/usr/share/games/fortunes")
VERSE_REFERENCE = re.compile(r"^\S+?\d+:\d+\s+")


def ascii_line(text):
    """Text on one line, ASCII only, whitespace collapsed: the form every tokenizer path agrees on."""
    text = text.encode("ascii", "ignore").decode("ascii")
    return " ".join(text.split())


def bible_verses():
    out = subprocess.run(["bible", "-f", "gen1:1-rev22:21"], check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        verse = ascii_line(VERSE_REFERENCE.sub("", line))
        if verse:
            yield verse


def fortunes():
    for path in sorted(FORTUNE_DIR.iterdir()):
        if path.suffix or not path.with_suffix(".dat").exists():
            continue  # the .dat index and .u8 link files, and anything that is no fortune file
        for cookie in path.read_text(encoding="latin-1").split("\n%\n"):
            line = ascii_line(cookie)
            if len(line) > 20:
                yield line


def main():
    lines = list(bible_verses()) + list(fortunes())
    pathlib.Path(sys.argv[1]).write_text("\n".join(lines) + "\n", encoding="ascii")
    print(f"{len(lines)} paragraphs, {sum(len(l) for l in lines)} characters", file=sys.stderr)


if __name__ == "__main__":
    main()
