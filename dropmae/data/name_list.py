"""Sequence list files (GOT-10k list.txt, DAVIS ImageSets): one name per line."""

from __future__ import annotations

from pathlib import Path


def read_name_list(path: Path, error_type: type[Exception]) -> list[tuple[int, str]]:
    """(line number, name) of each non-blank line of ``path``; raises ``error_type`` naming the file.

    A missing file, a folder, non-UTF-8 text, a name listed twice and a list without
    names are errors; a BOM and blank lines are ignored.
    """
    if not path.is_file():
        found = "a folder" if path.is_dir() else "nothing"
        raise error_type(f"{path}: sequence list file is missing (found {found})")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as error:
        raise error_type(f"{path}: not UTF-8 text ({error})") from None
    entries, seen = [], {}
    for number, line in enumerate(lines, start=1):
        name = line.strip()
        if not name:
            continue
        if name in seen:
            raise error_type(f"{path}:{number}: sequence {name!r} already listed on line {seen[name]}")
        seen[name] = number
        entries.append((number, name))
    if not entries:
        raise error_type(f"{path}: lists no sequences")
    return entries
