"""Nothing left behind by a refused run: what a run's log directories held before it started, and how to put
them back when a check refuses the run after the logger has written (a check at the first batch)."""

import os
import shutil
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Set, Tuple

# files up to this size are kept in memory, so that one the refused run overwrote (config.yaml) is written back
KEPT_BYTES = 1 << 20


@dataclass
class DirectorySnapshot:
    """The files under a directory (their modification times, sizes and, when small, contents), or the
    outermost of its directories that did not exist yet (``created``)."""

    root: str
    created: Optional[str] = None
    files: Dict[str, Tuple[int, int, Optional[bytes]]] = field(default_factory=dict)
    directories: Set[str] = field(default_factory=set)


def first_missing(path: str) -> Optional[str]:
    """The outermost directory of ``path`` that does not exist, or ``None`` when ``path`` exists."""
    path = os.path.abspath(path)
    if os.path.exists(path):
        return None
    while not os.path.exists(os.path.dirname(path)):
        path = os.path.dirname(path)
    return path


def snapshot(directories: Iterable[str]) -> List[DirectorySnapshot]:
    """What ``directories`` (a run's log directories) hold now."""
    snapshots = []
    for root in dict.fromkeys(os.path.abspath(d) for d in directories):
        state = DirectorySnapshot(root, first_missing(root))
        for directory, _, names in os.walk(root) if state.created is None else ():
            state.directories.add(directory)
            for name in names:
                path = os.path.join(directory, name)
                stat = os.stat(path)
                content = None
                if stat.st_size <= KEPT_BYTES:
                    with open(path, "rb") as f:
                        content = f.read()
                state.files[path] = (stat.st_mtime_ns, stat.st_size, content)
        snapshots.append(state)
    return snapshots


def restore(snapshots: Iterable[DirectorySnapshot]) -> None:
    """Put the directories back as :func:`snapshot` found them: remove what was created since, write back the
    small files that were changed."""
    for state in snapshots:
        if state.created is not None:
            shutil.rmtree(state.created, ignore_errors=True)
            continue
        for directory, subdirectories, names in os.walk(state.root, topdown=False):
            for name in names:
                path = os.path.join(directory, name)
                before = state.files.get(path)
                if before is None:
                    os.remove(path)
                elif before[2] is not None and os.stat(path).st_mtime_ns != before[0]:
                    with open(path, "wb") as f:
                        f.write(before[2])
                    os.utime(path, ns=(before[0], before[0]))
            if directory not in state.directories and not os.listdir(directory):
                os.rmdir(directory)
