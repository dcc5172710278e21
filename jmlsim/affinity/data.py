"""Binding-affinity data: PDBbind INDEX files and directories, CSV lists, and an HDF5 feature store.

Coordinates and radii are in **Ångström** (PDBbind's units; see :mod:`jmlsim.affinity`).

- INDEX files in the three PDBbind layouts: 2007 (``INDEX.2007.{core,refined,general}.data``), 2013
  (``INDEX_{core,refined,general_PL}_data.2013``) and 2016+ (``index/INDEX_{core,refined,general_PL}_data.YYYY``).
  Lines read ``code resolution year pK affinity // reference (ligand)``; resolution may be ``NMR``.
- A PDBbind directory in its own layout: ``XXXX/XXXX_pocket.pdb`` (default) or ``XXXX/XXXX_protein.pdb``, and
  ``XXXX/XXXX_ligand.sdf`` (``.mol2`` tried when the SDF is missing or fails). Code folders may sit in the root
  or one level down (``refined-set/XXXX``). Protein atoms are cropped to a sphere around the ligand centroid
  that covers every rotated/shifted grid (:func:`jmlsim.affinity.featurize.crop_radius`).
- A CSV with columns ``protein,ligand,pK`` (optional ``name``); paths are relative to the CSV's folder.

Bad complexes (missing file, ligand RDKit cannot sanitize, no protein atom near the ligand) are skipped with
one warning line each and returned as ``skipped = [{'name': ..., 'reason': ...}]``; the rest still load.

The HDF5 store (h5py) keeps the typed atoms of every complex (not grids: grids are made on the fly with
augmentation) under ``/complexes/<name>``, with the typing scheme, :data:`FEATURE_VERSION` and the loading
settings in the root attributes. It is reused when those match and extended with complexes it lacks.
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
import re
import warnings
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from jmlsim.affinity import atom_typing
from jmlsim.affinity.featurize import BOX_SIZE, Complex, crop_radius
from jmlsim.errors import InputError

FEATURE_VERSION = 1  # bump when typing rules or the stored layout change; older stores are then rebuilt
SETS = ('general', 'refined', 'core')


class SkippedComplexWarning(UserWarning):
    """A complex could not be loaded and was left out (the message names it and says why)."""


# ----------------------------------------------------------------------------------------------------------
# INDEX files
# ----------------------------------------------------------------------------------------------------------

class IndexRecord(NamedTuple):
    """One line of a PDBbind INDEX file."""
    code: str
    resolution: float      # Å, NaN for NMR or unknown
    method: str            # 'X-ray' when a resolution is given, else the token ('NMR')
    year: int              # release year, -1 if unreadable
    pK: float              # -log10(Kd/Ki/IC50 in M)
    affinity: str          # e.g. 'Kd=4.44uM', 'Ki<10nM', 'IC50~2mM'
    ligand: str            # ligand name in parentheses after '//', '' if absent


_AFFINITY = re.compile(r'^(Kd|Ki|IC50|EC50|Ka)\s*(=|<=|>=|<|>|~)', re.IGNORECASE)


def _float(tok: str) -> Optional[float]:
    try:
        return float(tok)
    except ValueError:
        return None


def parse_index(path: str) -> List[IndexRecord]:
    """Records of a PDBbind INDEX file (any of the 2007 / 2013 / 2016+ layouts); comment lines skipped.

    Raises InputError naming the file and line when a data line is malformed.
    """
    if not os.path.isfile(path):
        raise InputError(f"{path}: INDEX file not found")
    out = []
    with open(path, encoding='utf-8', errors='replace') as fh:
        for lineno, line in enumerate(fh, 1):
            body = line.strip()
            if not body or body.startswith('#'):
                continue
            data, _, tail = body.partition('//')
            tok = data.split()
            if len(tok) < 4 or not re.fullmatch(r'[0-9A-Za-z]{4}', tok[0]):
                raise InputError(f"{path}: line {lineno}: expected 'code resolution year pK affinity', got {body!r}")
            res = _float(tok[1])
            year = _float(tok[2])
            pk = None
            affinity = ''
            for t in tok[3:]:
                if pk is None and _float(t) is not None:
                    pk = float(t)
                elif not affinity and _AFFINITY.match(t):
                    affinity = t
            if pk is None:
                raise InputError(f"{path}: line {lineno}: no -logKd/Ki value in {body!r}")
            lig = re.search(r'\(([^()]*)\)\s*$', tail)
            out.append(IndexRecord(code=tok[0].lower(), resolution=math.nan if res is None else res,
                                   method='X-ray' if res is not None else tok[1],
                                   year=-1 if year is None else int(year),
                                   pK=pk, affinity=affinity, ligand=lig.group(1) if lig else ''))
    return out


def find_index_files(root: str, version: Optional[int] = None) -> Dict[str, str]:
    """{'general'|'refined'|'core': path} of the newest (or the given ``version``) INDEX files under ``root``."""
    found: Dict[int, Dict[str, str]] = {}

    def add(year, set_name, path):
        set_name = 'general' if set_name.startswith('general') else set_name
        if set_name in SETS:
            found.setdefault(int(year), {})[set_name] = path

    for p in glob.glob(os.path.join(root, 'INDEX.*.*.data')):           # 2007
        m = re.fullmatch(r'INDEX\.(\d{4})\.(\w+)\.data', os.path.basename(p))
        if m:
            add(m.group(1), m.group(2), p)
    for folder in (root, os.path.join(root, 'index')):                   # 2013 in root, 2016+ in index/
        for p in glob.glob(os.path.join(folder, 'INDEX_*_data.*')):
            m = re.fullmatch(r'INDEX_(core|refined|general_PL|general)_data\.(\d{4})', os.path.basename(p))
            if m:
                add(m.group(2), m.group(1), p)
    if not found:
        return {}
    if version is not None:
        if version not in found:
            raise InputError(f"{root}: no PDBbind INDEX files for version {version} (found {sorted(found)})")
        return found[version]
    return found[max(found)]


def read_index(root: str, version: Optional[int] = None) -> Tuple[Dict[str, IndexRecord], Dict[str, List[str]]]:
    """(records by code, codes by set) from the INDEX files under ``root``; empty when there are none."""
    records: Dict[str, IndexRecord] = {}
    members: Dict[str, List[str]] = {}
    for set_name, path in sorted(find_index_files(root, version).items()):
        recs = parse_index(path)
        members[set_name] = [r.code for r in recs]
        for r in recs:
            records.setdefault(r.code, r)
    return records, members


# ----------------------------------------------------------------------------------------------------------
# Complexes
# ----------------------------------------------------------------------------------------------------------

def load_complex(name: str, protein_path: str, ligand_paths, pK: float = math.nan, scheme='kdeep',
                 radius: Optional[float] = None, keep_waters: bool = False) -> Complex:
    """Type one complex. ``ligand_paths``: a path or several to try in order (e.g. the SDF, then the MOL2).

    Protein atoms farther than ``radius`` Å (default :func:`crop_radius`) from the ligand centroid are dropped.
    Raises FileNotFoundError / ValueError with a one-line reason.
    """
    if isinstance(ligand_paths, (str, os.PathLike)):
        ligand_paths = [ligand_paths]
    ligand_paths = [p for p in ligand_paths if p]
    errors = []
    lig = None
    for path in ligand_paths:
        try:
            lig = atom_typing.type_ligand(str(path), scheme)
            break
        except (FileNotFoundError, ValueError) as exc:
            errors.append(f"{os.path.basename(str(path))}: {exc}")
    if lig is None:
        if all('missing file' in e for e in errors):
            raise FileNotFoundError("missing file " + " / ".join(str(p) for p in ligand_paths))
        raise ValueError("; ".join(errors))
    lc, lch, lr = lig
    if len(lc) == 0:
        raise ValueError("ligand has no heavy atoms")
    center = lc.mean(axis=0)
    r = crop_radius() if radius is None else float(radius)
    pc, pch, pr = atom_typing.type_protein(str(protein_path), scheme, keep_waters, center=center, radius=r)
    if len(pc) == 0:
        raise ValueError(f"empty pocket: no protein atom within {r:.1f} Å of the ligand centroid")
    return Complex(name=name, protein_coords=pc.astype(np.float32), protein_channels=pch.astype(bool),
                   protein_radii=pr.astype(np.float32), ligand_coords=lc.astype(np.float32),
                   ligand_channels=lch.astype(bool), ligand_radii=lr.astype(np.float32), pK=float(pK))


def _skip(skipped: list, name: str, reason: str) -> None:
    reason = ' '.join(str(reason).split())
    skipped.append({'name': name, 'reason': reason})
    warnings.warn(f"skipping complex {name}: {reason}", SkippedComplexWarning, stacklevel=3)


def _load_many(jobs: Sequence[Tuple[str, str, List[str], float]], scheme, radius, keep_waters, progress):
    """jobs: (name, protein_path, ligand_paths, pK) -> (complexes, skipped)."""
    atom_typing.get_scheme(scheme)  # an unknown scheme is the user's error, not a reason to skip every complex
    complexes, skipped = [], []
    it = jobs
    if progress:
        from tqdm import tqdm
        it = tqdm(jobs, desc='typing complexes', unit='cpx')
    for name, prot, ligs, pk in it:
        try:
            complexes.append(load_complex(name, prot, ligs, pk, scheme, radius, keep_waters))
        except (FileNotFoundError, ValueError) as exc:
            _skip(skipped, name, exc)
    return complexes, skipped


def _code_dirs(root: str) -> Dict[str, str]:
    """code -> folder, for PDBbind code folders in ``root`` or one level below."""
    out: Dict[str, str] = {}
    pat = re.compile(r'[0-9a-z]{4}')
    for entry in sorted(os.listdir(root)):
        path = os.path.join(root, entry)
        if not os.path.isdir(path):
            continue
        if pat.fullmatch(entry.lower()):
            out.setdefault(entry.lower(), path)
        else:
            for sub in sorted(os.listdir(path)):
                if pat.fullmatch(sub.lower()) and os.path.isdir(os.path.join(path, sub)):
                    out.setdefault(sub.lower(), os.path.join(path, sub))
    return out


def pdbbind_jobs(root: str, codes: Optional[Iterable[str]] = None, sets: Optional[Sequence[str]] = None,
                 pocket: bool = True, version: Optional[int] = None):
    """(name, protein_path, ligand_paths, pK) per complex of a PDBbind directory (no parsing yet).

    Codes: ``codes`` if given, else those of the INDEX ``sets`` (default all found), else every code folder.
    pK comes from the INDEX files (NaN when a code is not listed).
    """
    if not os.path.isdir(root):
        raise InputError(f"{root}: PDBbind directory not found")
    records, members = read_index(root, version)
    dirs = _code_dirs(root)
    if codes is not None:
        code_list = [c.lower() for c in codes]
    elif members:
        wanted = sets or tuple(members)
        bad = [s for s in wanted if s not in members]
        if bad:
            raise InputError(f"{root}: INDEX set(s) {bad} not found (have {sorted(members)})")
        code_list = list(dict.fromkeys(c for s in wanted for c in members[s]))
    else:
        code_list = sorted(dirs)
    jobs = []
    for code in code_list:
        folder = dirs.get(code, os.path.join(root, code))
        prot = os.path.join(folder, f"{code}_{'pocket' if pocket else 'protein'}.pdb")
        ligs = [os.path.join(folder, f"{code}_ligand.sdf"), os.path.join(folder, f"{code}_ligand.mol2")]
        if not os.path.exists(ligs[1]):
            ligs = ligs[:1]
        elif not os.path.exists(ligs[0]):
            ligs = ligs[1:]
        rec = records.get(code)
        jobs.append((code, prot, ligs, rec.pK if rec else math.nan))
    return jobs


def _check_protein_files(jobs):
    """Turn a missing protein file into a skip reason up front (cheaper than typing the ligand first)."""
    ok, skipped = [], []
    for job in jobs:
        if not os.path.isfile(job[1]):
            _skip(skipped, job[0], f"missing file {job[1]}")
        else:
            ok.append(job)
    return ok, skipped


def load_pdbbind(root: str, codes: Optional[Iterable[str]] = None, sets: Optional[Sequence[str]] = None,
                 scheme='kdeep', pocket: bool = True, radius: Optional[float] = None, keep_waters: bool = False,
                 version: Optional[int] = None, progress: bool = False):
    """Typed complexes of a PDBbind directory: (list[Complex], skipped list[{'name', 'reason'}])."""
    atom_typing.get_scheme(scheme)
    jobs, skipped = _check_protein_files(pdbbind_jobs(root, codes, sets, pocket, version))
    complexes, more = _load_many(jobs, scheme, radius, keep_waters, progress)
    return complexes, skipped + more


def csv_jobs(path: str):
    """(name, protein_path, ligand_paths, pK) per row of a ``protein,ligand,pK[,name]`` CSV."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: CSV file not found")
    base = os.path.dirname(os.path.abspath(path))
    jobs, seen = [], set()
    with open(path, newline='', encoding='utf-8') as fh:
        reader = csv.DictReader(fh)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        for need in ('protein', 'ligand', 'pK'):
            if need not in cols:
                raise InputError(f"{path}: missing column {need!r} (need protein,ligand,pK; have {cols})")
        for rowno, row in enumerate(reader, 2):
            row = {k.strip(): (v or '').strip() for k, v in row.items() if k is not None}
            pk_text = row['pK']
            pk = math.nan if pk_text in ('', 'nan', 'NaN', 'NA') else _float(pk_text)
            if pk is None:
                raise InputError(f"{path}: line {rowno}: pK {pk_text!r} is not a number")
            name = row.get('name') or os.path.splitext(os.path.basename(row['ligand']))[0]
            if name in seen:
                name = f"{name}#{rowno}"
            seen.add(name)
            jobs.append((name, os.path.join(base, row['protein']), [os.path.join(base, row['ligand'])], pk))
    return jobs


def load_csv(path: str, scheme='kdeep', radius: Optional[float] = None, keep_waters: bool = False,
             progress: bool = False):
    """Typed complexes of a ``protein,ligand,pK`` CSV: (list[Complex], skipped list[{'name', 'reason'}])."""
    atom_typing.get_scheme(scheme)
    jobs, skipped = _check_protein_files(csv_jobs(path))
    complexes, more = _load_many(jobs, scheme, radius, keep_waters, progress)
    return complexes, skipped + more


# ----------------------------------------------------------------------------------------------------------
# HDF5 store
# ----------------------------------------------------------------------------------------------------------

_ARRAYS = ('protein_coords', 'protein_channels', 'protein_radii', 'ligand_coords', 'ligand_channels',
           'ligand_radii')


def _key(name: str) -> str:
    return name.replace('/', '|')


def store_meta(source: str, scheme='kdeep', pocket: bool = True, radius: Optional[float] = None,
               keep_waters: bool = False) -> dict:
    """The attributes a store must match to be reused."""
    scheme = atom_typing.get_scheme(scheme)
    return {'scheme': scheme.name, 'version': FEATURE_VERSION, 'source': os.path.abspath(source),
            'pocket': bool(pocket), 'radius': float(crop_radius() if radius is None else radius),
            'keep_waters': bool(keep_waters), 'box_size': BOX_SIZE}


def write_store(path: str, complexes: Sequence[Complex], skipped: Sequence[dict], meta: dict,
                append: bool = False) -> None:
    """Write (or, with ``append``, add to) an HDF5 feature store."""
    import h5py
    tmp = path if append else path + '.tmp'
    with h5py.File(tmp, 'a' if append else 'w') as f:
        if not append:
            for k, v in meta.items():
                f.attrs[k] = v
            f.attrs['skipped'] = '[]'
        grp = f.require_group('complexes')
        for c in complexes:
            key = _key(c.name)
            if key in grp:
                del grp[key]
            g = grp.create_group(key)
            g.attrs['name'] = c.name
            g.attrs['pK'] = float(c.pK)
            for a in _ARRAYS:
                g.create_dataset(a, data=np.asarray(getattr(c, a)))
        old = json.loads(f.attrs.get('skipped', '[]'))
        names = {s['name'] for s in skipped}
        f.attrs['skipped'] = json.dumps([s for s in old if s['name'] not in names] + list(skipped))
    if not append:
        os.replace(tmp, path)


def read_store(path: str, names: Optional[Iterable[str]] = None):
    """(complexes, skipped, meta) from an HDF5 feature store; ``names`` restricts (and orders) the complexes."""
    import h5py
    try:
        with h5py.File(path, 'r') as f:
            meta = {k: (v.item() if hasattr(v, 'item') else v) for k, v in f.attrs.items() if k != 'skipped'}
            skipped = json.loads(f.attrs.get('skipped', '[]'))
            grp = f['complexes'] if 'complexes' in f else {}
            keys = list(grp.keys()) if names is None else [_key(n) for n in names if _key(n) in grp]
            out = []
            for k in keys:
                g = grp[k]
                out.append(Complex(name=str(g.attrs['name']), pK=float(g.attrs['pK']),
                                   **{a: g[a][()] for a in _ARRAYS}))
    except OSError as exc:
        raise InputError(f"{path}: not a readable HDF5 feature store ({exc})") from None
    return out, skipped, meta


def _meta_matches(stored: dict, meta: dict) -> bool:
    for k, v in meta.items():
        s = stored.get(k)
        if isinstance(v, float):
            if s is None or not np.isclose(float(s), v):
                return False
        elif (s.decode() if isinstance(s, bytes) else s) != v:
            return False
    return True


def load_dataset(source: str, scheme='kdeep', store: Optional[str] = None, codes: Optional[Iterable[str]] = None,
                 sets: Optional[Sequence[str]] = None, pocket: bool = True, radius: Optional[float] = None,
                 keep_waters: bool = False, progress: bool = False):
    """Typed complexes from a PDBbind directory or a CSV file, through an optional HDF5 ``store``.

    A store whose scheme, version and settings match is reused (complexes it lacks are typed and appended);
    otherwise it is rebuilt. Returns (list[Complex], skipped list[{'name', 'reason'}]) for the requested set.
    """
    if os.path.isdir(source):
        jobs = pdbbind_jobs(source, codes, sets, pocket)
    elif source.lower().endswith('.csv'):
        if codes is not None or sets:
            raise InputError(f"{source}: codes/sets select PDBbind entries; a CSV is loaded whole")
        jobs = csv_jobs(source)
    else:
        raise InputError(f"{source}: expected a PDBbind directory or a .csv file")
    meta = store_meta(source, scheme, pocket, radius, keep_waters)
    wanted = [j[0] for j in jobs]
    have: Dict[str, Complex] = {}
    have_skipped: Dict[str, dict] = {}
    reuse = False
    if store and os.path.exists(store):
        _, _, stored_meta = read_store(store, names=[])
        reuse = _meta_matches(stored_meta, meta)
        if reuse:
            cpx, skipped, _ = read_store(store, wanted)
            have = {c.name: c for c in cpx}
            have_skipped = {s['name']: s for s in skipped}
        else:
            warnings.warn(f"{store}: feature store was made with other settings; rebuilding it", stacklevel=2)
    todo = [j for j in jobs if j[0] not in have and j[0] not in have_skipped]
    todo_ok, new_skipped = _check_protein_files(todo)
    new, more = _load_many(todo_ok, scheme, radius, keep_waters, progress)
    new_skipped += more
    if store and (new or new_skipped or not reuse):
        write_store(store, new, new_skipped, meta, append=reuse)
    # Report earlier skips again so every caller sees the whole picture of its request.
    for s in have_skipped.values():
        if s['name'] in wanted:
            warnings.warn(f"skipping complex {s['name']}: {s['reason']}", SkippedComplexWarning, stacklevel=2)
    have.update({c.name: c for c in new})
    skipped_all = {**have_skipped, **{s['name']: s for s in new_skipped}}
    complexes = [have[n] for n in wanted if n in have]
    skipped = [skipped_all[n] for n in wanted if n in skipped_all]
    return complexes, skipped
