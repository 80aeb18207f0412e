"""`chorushead report`: the dataset card of a build, ``<out>/report/index.html`` + ``report.md`` + PNGs.

Three rooms: :mod:`.card` reads what the build holds (manifests through the stages' typed outputs and
payloads, the runner's fingerprints, the LMDB's index, meta and markers) into a :class:`Card`;
:mod:`.plots` draws it; :mod:`.page` writes the sections as Markdown and HTML. A build that stopped
early gets a card of what exists, saying what is missing.
"""
from chorushead.report.card import Card, FunnelRow, SplitRow, _splits, collect
from chorushead.report.page import FINGERPRINT_ROWS, REPORT_DIR, Section, card_hint, report, write_card

__all__ = ["Card", "FunnelRow", "SplitRow", "Section", "collect", "write_card", "report", "card_hint",
           "REPORT_DIR", "FINGERPRINT_ROWS", "_splits"]
