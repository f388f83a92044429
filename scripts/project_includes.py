"""The project-header include graph, for scripts/check-layers and scripts/check-thread-safety: which
project headers a file includes ("..."), which system headers (<...>), and the chain of project
headers from a file to one that satisfies a test."""
import os
import re

PROJECT = re.compile(r'#\s*include\s*"([^"]+)"')


class IncludeGraph:
    def __init__(self, root):
        self.root = root
        self._text = {}

    def text(self, path):
        if path not in self._text:
            try:
                self._text[path] = open(os.path.join(self.root, path)).read()
            except (FileNotFoundError, UnicodeDecodeError):
                self._text[path] = ""
        return self._text[path]

    def project_includes(self, path):
        return PROJECT.findall(self.text(path))

    def chain_to(self, path, found, seen=None):
        """The include chain from `path` to the first file (itself included) for which
        found(file) holds, through project headers; None when there is none."""
        seen = set() if seen is None else seen
        if path in seen:
            return None
        seen.add(path)
        if found(path):
            return [path]
        for inc in self.project_includes(path):
            if os.path.exists(os.path.join(self.root, inc)):
                chain = self.chain_to(inc, found, seen)
                if chain:
                    return [path] + chain
        return None
