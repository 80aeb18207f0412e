"""Write chorushead/data/open_head_topology.npz from MediaPipe's face-mesh connection lists.

MediaPipe (Apache-2.0) ships its face-mesh topology as edge sets in
``mediapipe/python/solutions/face_mesh_connections.py``; the triangles are not listed. This script
reads that file (from an installed mediapipe, or a path given on the command line, e.g. unpacked from
the 0.10.21 wheel) and derives what the open head needs:

- ``faces`` (852, 3): the tessellation's triangles = the 3-cliques of its 1,322 undirected edges, less
  the two cliques that are not faces (both beside the nose: every edge of theirs is shared by three
  cliques, which a manifold surface never has), oriented consistently with normals towards the
  camera (+z in the canonical face). The surface then has four boundary loops: the face outline, the
  mouth opening and the two eyes.
- the region index sets the metrics and the expression basis use: ``lips``, ``left_eye``,
  ``right_eye``, ``left_brow``, ``right_brow``, ``face_oval``, ``nose``.

    python scripts/make_open_head_topology.py [path/to/face_mesh_connections.py]
"""
from __future__ import annotations

import importlib.util
import itertools
import sys
from collections import Counter, deque
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "chorushead" / "data" / "open_head_topology.npz"
CANONICAL = ROOT / "chorushead" / "data" / "face_mesh_canonical.npy"


def load_connections(path: str | None):
    if path is None:
        spec = importlib.util.find_spec("mediapipe")
        if spec is None:
            sys.exit("mediapipe is not importable here: pass the path of face_mesh_connections.py "
                     "(e.g. unzip it from the mediapipe 0.10.21 wheel)")
        path = str(Path(list(spec.submodule_search_locations)[0]) / "python" / "solutions" / "face_mesh_connections.py")
    spec = importlib.util.spec_from_file_location("face_mesh_connections", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def triangles(edges) -> np.ndarray:
    und = {tuple(sorted(e)) for e in edges}
    nb: dict[int, set] = {}
    for a, b in und:
        nb.setdefault(a, set()).add(b)
        nb.setdefault(b, set()).add(a)
    tris = {tuple(sorted((a, b, c))) for a, b in und for c in nb[a] & nb[b]}
    count = Counter(e for t in tris for e in itertools.combinations(t, 2))
    spurious = {t for t in tris if all(count[e] == 3 for e in itertools.combinations(t, 2))}
    tris = sorted(tris - spurious)
    count = Counter(e for t in tris for e in itertools.combinations(t, 2))
    if max(count.values()) > 2:
        raise SystemExit("the derived triangles are not a manifold surface: has the topology changed?")
    return np.asarray(tris, np.int64)


def orient(faces: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Consistent winding by breadth-first search over shared edges, then all facing +z."""
    faces = faces.copy()
    by_edge: dict[tuple, list[int]] = {}
    for i, f in enumerate(faces):
        for a, b in ((f[0], f[1]), (f[1], f[2]), (f[2], f[0])):
            by_edge.setdefault(tuple(sorted((a, b))), []).append(i)
    done = np.zeros(len(faces), bool)
    for start in range(len(faces)):
        if done[start]:
            continue
        done[start] = True
        queue = deque([start])
        while queue:
            i = queue.popleft()
            f = faces[i]
            for a, b in ((f[0], f[1]), (f[1], f[2]), (f[2], f[0])):
                for j in by_edge[tuple(sorted((a, b)))]:
                    if done[j]:
                        continue
                    g = list(faces[j])
                    directed = {(g[0], g[1]), (g[1], g[2]), (g[2], g[0])}
                    if (a, b) in directed:          # same direction as its neighbour: flip it
                        faces[j] = faces[j][::-1]
                    done[j] = True
                    queue.append(j)
    tri = verts[faces]
    nz = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])[:, 2]
    return faces if (nz > 0).sum() >= len(faces) / 2 else faces[:, ::-1].copy()


def vertex_set(conn) -> np.ndarray:
    return np.asarray(sorted({v for e in conn for v in e}), np.int64)


def main(argv: list[str]) -> None:
    mod = load_connections(argv[0] if argv else None)
    canonical = np.load(CANONICAL)[:468]
    faces = orient(triangles(mod.FACEMESH_TESSELATION), canonical)
    sets = {"lips": mod.FACEMESH_LIPS, "left_eye": mod.FACEMESH_LEFT_EYE, "right_eye": mod.FACEMESH_RIGHT_EYE,
            "left_brow": mod.FACEMESH_LEFT_EYEBROW, "right_brow": mod.FACEMESH_RIGHT_EYEBROW,
            "face_oval": mod.FACEMESH_FACE_OVAL, "nose": mod.FACEMESH_NOSE}
    np.savez_compressed(OUT, faces=faces.astype(np.int32), **{k: vertex_set(v).astype(np.int32) for k, v in sets.items()})
    print(f"{OUT}: {len(faces)} faces, " + ", ".join(f"{k} {len(vertex_set(v))}" for k, v in sets.items()))


if __name__ == "__main__":
    main(sys.argv[1:])
