"""The ground floor both packages stand on; it imports nothing else of ours.

- :mod:`errors`   StageError, BadInput, MissingAsset
- :mod:`manifest` Record, fingerprints, atomic writes, JSONL manifests
- :mod:`windows`  the packed-window LMDB format (write helpers, one ``open_env``, the reader)
- :mod:`media`    every ffmpeg call (probe, decode, cut, encode)
- :mod:`flame`    the FLAME head model and :mod:`render`, its one software renderer
"""
