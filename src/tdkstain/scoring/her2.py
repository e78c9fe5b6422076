"""HER2 IHC scoring by the ASCO/CAP guideline (2018, unchanged in 2023), from measured cells.

Per tumour cell (``scoring.cells``): an intensity class (0 negative, 1 weak,
2 moderate, 3 strong; DAB OD thresholds) and whether its membrane is complete.
Per tile or region, over its tumour cells:

- **3+**: complete, intense (strong) membrane staining in > 10 % of tumour cells;
- **2+**: weak-to-moderate (or stronger) complete staining in > 10 %, and not 3+;
- **1+**: faint (weak or stronger), incomplete staining in > 10 %, and not 2+ or 3+;
- **0**: no staining, or faint incomplete staining in <= 10 %.

The **H-score** is ``1 x %weak + 2 x %moderate + 3 x %strong`` of tumour
cells (0-300), completeness aside. A region with fewer than ``min_cells``
tumour cells is **not scorable** (with the reason), never 0.

Which cells are **tumour cells** is a stated, switchable rule
(``tumour_rule``), because a tile holds stroma and immune cells too:

- ``"all"``: every detected cell (for tiles cropped to tumour by hand).
- ``"dense"``: cells with at least ``min_neighbours`` other nuclei within
  ``neighbour_radius_um`` of theirs: carcinoma grows in cohesive nests, stroma
  holds scattered fibroblasts.
- ``"epithelial"`` (default): ``dense`` and a nucleus of at least
  ``min_nucleus_um2`` (lymphocytes, ~6-7 um across, also pack densely;
  carcinoma nuclei are larger).

Limits: the rules read nuclear density and size only, not morphology; dense
lymphocytic infiltrates with large nuclei, or single-file lobular carcinoma,
are misassigned. In situ carcinoma is not told apart from invasive. Scores are
for research, never a diagnosis.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from tdkstain.data.pairs import HER2_LABELS
from tdkstain.plumbing.errors import TdkstainError
from tdkstain.scoring.cells import CellParams, Cells

__all__ = ["SCORES", "TUMOUR_RULES", "ScoringParams", "RegionScore", "tumour_cells", "score_cells", "pooled_score"]

SCORES: tuple[str, ...] = HER2_LABELS  # "0", "1+", "2+", "3+": the guideline's scores, in order
TUMOUR_RULES: tuple[str, ...] = ("epithelial", "dense", "all")


@dataclass(frozen=True)
class ScoringParams:
    """Every setting of HER2 scoring; recorded with every result."""

    cells: CellParams = field(default_factory=CellParams)
    tumour_rule: str = "epithelial"
    neighbour_radius_um: float = 25.0
    min_neighbours: int = 3
    min_nucleus_um2: float = 40.0  # a 7.1 um disk: larger than lymphocyte nuclei
    positive_fraction: float = 0.10  # the guideline's "> 10 % of tumour cells"
    min_cells: int = 20  # fewer tumour cells: not scorable

    def validate(self) -> "ScoringParams":
        self.cells.validate()
        if self.tumour_rule not in TUMOUR_RULES:
            raise TdkstainError(f"tumour rule {self.tumour_rule!r} is unknown: use one of {', '.join(TUMOUR_RULES)}")
        if not (0 < self.neighbour_radius_um <= 200 and 0 <= self.min_neighbours <= 100 and self.min_nucleus_um2 >= 0):
            raise TdkstainError("tumour rule: neighbour_radius_um in (0, 200], min_neighbours in [0, 100], "
                                "min_nucleus_um2 >= 0")
        if not 0 < self.positive_fraction < 1 or not 1 <= self.min_cells <= 100_000:
            raise TdkstainError("positive_fraction must lie in (0, 1) and min_cells in [1, 100000]")
        return self

    def to_dict(self) -> dict:
        out = asdict(self)
        out["cells"] = self.cells.to_dict()
        return out

    @classmethod
    def from_dict(cls, values: dict) -> "ScoringParams":
        """The inverse of :meth:`to_dict` (a ``scores.json``'s ``params``); unknown keys are an error naming them."""
        values = dict(values)
        cells = dict(values.pop("cells", None) or {})
        for name, known, given in (("scoring", cls.__dataclass_fields__, values),
                                   ("cells", CellParams.__dataclass_fields__, cells)):
            unknown = sorted(set(given) - set(known) - {"cells"})
            if unknown:
                raise TdkstainError(f"{name} settings: unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}")
        if "thresholds" in cells:
            cells["thresholds"] = tuple(cells["thresholds"])
        return cls(cells=CellParams(**cells), **values).validate()


@dataclass
class RegionScore:
    """The guideline's reading of one tile or region."""

    score: str | None  # "0", "1+", "2+", "3+", or None when not scorable
    reason: str  # why this score (or why none)
    cells: int  # cells detected
    tumour_cells: int
    percent: dict[str, float]  # % of tumour cells per intensity class: negative, weak, moderate, strong
    percent_complete: float  # % of tumour cells with a complete, at least weak membrane
    percent_strong_complete: float
    percent_stained: float  # % with at least weak staining, complete or not
    h_score: float  # 0..300
    counts: dict[str, int] = field(default_factory=dict)  # the counts behind the percentages (pooling regions)

    @property
    def scorable(self) -> bool:
        return self.score is not None

    def to_dict(self) -> dict:
        return asdict(self)


def tumour_cells(cells: Cells, params: ScoringParams) -> np.ndarray:
    """(N,) bool: the cells the rule ``params.tumour_rule`` counts as tumour cells."""
    if params.tumour_rule == "all" or len(cells) == 0:
        return np.ones(len(cells), bool)
    from scipy.spatial import cKDTree

    radius = params.cells.px(params.neighbour_radius_um)
    neighbours = np.array([len(n) - 1 for n in cKDTree(cells.centroid).query_ball_point(cells.centroid, radius)])
    dense = neighbours >= params.min_neighbours
    if params.tumour_rule == "dense":
        return dense
    return dense & (cells.nucleus_area_um2 >= params.min_nucleus_um2)


def score_cells(cells: Cells, params: ScoringParams | None = None, tumour: np.ndarray | None = None) -> RegionScore:
    """The guideline's score of the tumour cells among ``cells`` (``tumour``: a mask of them, default by the rule)."""
    params = (params or ScoringParams()).validate()
    tumour = tumour_cells(cells, params) if tumour is None else np.asarray(tumour, bool)
    counts = _counts(cells.intensity_class[tumour], cells.complete[tumour])
    counts["cells"] = len(cells)
    return pooled_score(counts, params)


def _counts(intensity_class: np.ndarray, complete: np.ndarray) -> dict[str, int]:
    stained = intensity_class >= 1
    return {
        "tumour": int(len(intensity_class)),
        "negative": int(np.sum(intensity_class == 0)),
        "weak": int(np.sum(intensity_class == 1)),
        "moderate": int(np.sum(intensity_class == 2)),
        "strong": int(np.sum(intensity_class == 3)),
        "complete": int(np.sum(stained & complete)),
        "strong_complete": int(np.sum((intensity_class == 3) & complete)),
    }


def pooled_score(counts: dict[str, int], params: ScoringParams | None = None) -> RegionScore:
    """The guideline applied to cell counts (one region's, or several regions' summed: a slide's)."""
    params = params or ScoringParams()
    n = int(counts.get("tumour", 0))
    classes = ("negative", "weak", "moderate", "strong")
    percent = {c: (100.0 * counts.get(c, 0) / n if n else 0.0) for c in classes}
    stained = counts.get("weak", 0) + counts.get("moderate", 0) + counts.get("strong", 0)
    pct_complete = 100.0 * counts.get("complete", 0) / n if n else 0.0
    pct_strong = 100.0 * counts.get("strong_complete", 0) / n if n else 0.0
    pct_stained = 100.0 * stained / n if n else 0.0
    h_score = percent["weak"] + 2 * percent["moderate"] + 3 * percent["strong"]
    limit = 100 * params.positive_fraction
    if n < params.min_cells:
        score, reason = None, f"not scorable: {n} tumour cells (fewer than {params.min_cells})"
    elif pct_strong > limit:
        score, reason = "3+", f"complete strong membranes in {pct_strong:.1f} % of tumour cells (> {limit:g} %)"
    elif pct_complete > limit:
        score, reason = "2+", f"complete weak-to-moderate membranes in {pct_complete:.1f} % (> {limit:g} %), strong in {pct_strong:.1f} %"
    elif pct_stained > limit:
        score, reason = "1+", f"faint or incomplete membranes in {pct_stained:.1f} % (> {limit:g} %), complete in {pct_complete:.1f} %"
    else:
        score, reason = "0", f"membrane staining in {pct_stained:.1f} % of tumour cells (<= {limit:g} %)"
    return RegionScore(
        score=score, reason=reason, cells=int(counts.get("cells", n)), tumour_cells=n, percent=percent,
        percent_complete=pct_complete, percent_strong_complete=pct_strong, percent_stained=pct_stained,
        h_score=h_score, counts={k: int(v) for k, v in counts.items()},
    )
