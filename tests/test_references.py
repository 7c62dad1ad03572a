"""Citations a reader can resolve: no citation of files outside the repository, and every work cited by
authors and year listed in docs/references.md."""

import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCES = os.path.join(ROOT, "docs", "references.md")

# written in two pieces so that this file does not match itself
PAPER_FILE = re.compile("papers" + r"/0\d")
ARCHITECTURE_NOTES = re.compile(r"(?<![\w/.])" + "ARCHITECTURE" + r"\.md")

SURNAME = r"[A-Z][A-Za-z'-]+"
VENUE = r"(?:[A-Z][A-Za-z-]*\s+)?"
# "Stutz et al. 2021", "Kwon et al., ICML 2021", "Chen et al. (ICLR 2021", "Croce and Hein 2020",
# "Rade and Moosavi-Dezfooli, ICLR 2022"; the year may follow a line break
CITATION = re.compile(rf"\b({SURNAME})(?:\s+et\s+al\.|\s+and\s+{SURNAME})[,;]?\s+\(?{VENUE}((?:19|20)\d\d)\b")
CITING = ["lit_robust", "callbacks", "configs", "README.md"]


def tracked_files():
    """The repository's tracked files (every file outside .git and build folders where git is not there)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True)
        names = [name for name in listed.stdout.split("\0") if name]
    except (OSError, subprocess.CalledProcessError):
        names = []
        for folder, subfolders, files in os.walk(ROOT):
            subfolders[:] = [d for d in subfolders if not d.startswith(".") and not d.endswith(".egg-info")
                             and d not in ("logs", "study", "__pycache__")]
            names += [os.path.relpath(os.path.join(folder, name), ROOT) for name in files]
    return [name for name in names if os.path.isfile(os.path.join(ROOT, name))]


def text_of(name):
    try:
        with open(os.path.join(ROOT, name), encoding="utf-8") as handle:
            return handle.read()
    except (UnicodeDecodeError, OSError):
        return ""


def cited_works():
    """(surname, year, where) of every author-year citation in the library, the callbacks, the configs and
    the README."""
    found = []
    for name in tracked_files():
        if not any(name == top or name.startswith(top + "/") for top in CITING):
            continue
        for match in CITATION.finditer(text_of(name)):
            found.append((match.group(1), match.group(2), name))
    return found


def listed_works():
    """The bold keys of docs/references.md, e.g. "Stutz et al. 2021", "Croce and Hein 2020"."""
    with open(REFERENCES, encoding="utf-8") as handle:
        return re.findall(r"^- \*\*(.+?)\*\*", handle.read(), flags=re.MULTILINE)


def test_no_citation_of_files_outside_the_repository():
    offending = []
    for name in tracked_files():
        for number, line in enumerate(text_of(name).splitlines(), 1):
            if PAPER_FILE.search(line) or ARCHITECTURE_NOTES.search(line):
                offending.append(f"{name}:{number}: {line.strip()}")
    assert not offending, "cite works by authors and year (docs/references.md), the architecture notes as " \
                          "docs/architecture.md:\n" + "\n".join(offending)


def test_every_cited_work_is_in_the_references():
    keys = listed_works()
    cited = cited_works()
    assert len(cited) > 50  # the pattern still finds the citations
    missing = sorted({f"{surname} {year} ({where})" for surname, year, where in cited
                      if not any(surname in key and year in key for key in keys)})
    assert not missing, "cited but not in docs/references.md: " + ", ".join(missing)


@pytest.mark.parametrize("citation, work", [
    ("(Stutz et al. 2021, supplement Sec. D)", ("Stutz", "2021")),
    ("Kwon et al., ICML 2021, \"ASAM\"", ("Kwon", "2021")),
    ("Chen et al. (ICLR 2021, \"Robust", ("Chen", "2021")),
    ("Andriushchenko et\nal., ICML 2023", ("Andriushchenko", "2023")),
    ("(Croce and Hein 2020)", ("Croce", "2020")),
    ("Rade and Moosavi-Dezfooli, ICLR 2022", ("Rade", "2022")),
])
def test_the_citation_pattern_reads_each_form(citation, work):
    assert [match.groups() for match in CITATION.finditer(citation)] == [work]


def test_the_references_name_the_implemented_papers():
    keys = listed_works()
    for key in ("Stutz et al. 2021", "Stutz et al. 2021, supplement", "Yan et al. 2022", "Singla et al. 2021"):
        assert key in keys
    with open(REFERENCES, encoding="utf-8") as handle:
        text = handle.read()
    assert "arXiv:2104.04448" in text and "arXiv:2102.07861" in text
    assert os.path.isfile(os.path.join(ROOT, "docs", "architecture.md"))
