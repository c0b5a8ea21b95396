"""An evaluation source: its manifest read once, its rows by row key.

Decoded rows carry their manifest row key (`omnivl.data.decode`, column `row_key`); every task of the `evaluate`
job joins them back to their manifest row through an `EvalSource`, by row key only (DESIGN §6.3): the media uri
(a gallery or captioning item), the captions, the QA fields, the class names. Plain Python, no Ray.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from omnivl.data.config import SourceConfig
from omnivl.data.manifest import ManifestRow


@dataclass(frozen=True)
class EvalSource:
    """`config` (its manifest an absolute URI) and `rows`: every manifest row by row key, in manifest order."""

    config: SourceConfig
    rows: dict[str, ManifestRow]

    @classmethod
    def read(cls, config: SourceConfig) -> EvalSource:
        """Reads the manifest of `config` (in this process: evaluation sources are small enough)."""
        from omnivl.data.manifest import read_manifest

        return cls(config, {r.row_key: r for r in read_manifest(config)})

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def modality(self) -> str:
        return self.config.modality

    @property
    def kind(self) -> str:
        return self.config.kind

    @property
    def manifest(self) -> str:
        return self.config.manifest

    def row(self, key: str) -> ManifestRow:
        """The manifest row of a decoded row's key. Raises KeyError naming the source for a foreign key."""
        try:
            return self.rows[str(key)]
        except KeyError:
            raise KeyError(f"{self.name}: row key {key!r} is not a row of {self.manifest}") from None

    def uri(self, key: str) -> str:
        """The media file of a row: what makes it a gallery (or captioning) item."""
        return self.row(key).uri

    def items(self) -> int:
        """Distinct media files (an upper bound on the gallery items of a decode pass)."""
        return len({r.uri for r in self.rows.values()})

    def class_names_by_id(self) -> dict[int, str]:
        """label id -> class name of every labelled row (the ids decoded rows carry; blank labels left out)."""
        from omnivl.data.text import class_name, label_id_for_class

        names = {class_name(r.label) for r in self.rows.values()}
        return {label_id_for_class(n): n for n in names if n}

    def first_rows(self, uris: list[str]) -> list[ManifestRow]:
        """Copies of the first manifest row of each of `uris` that the manifest has, in the order of `uris`."""
        first: dict[str, ManifestRow] = {}
        for row in self.rows.values():
            first.setdefault(row.uri, row)
        return [dataclasses.replace(first[u]) for u in uris if u in first]

    def with_manifest(self, manifest: str) -> SourceConfig:
        """This source's settings over another manifest (e.g. the train split of a linear probe)."""
        return self.config.model_copy(update={"manifest": manifest})
