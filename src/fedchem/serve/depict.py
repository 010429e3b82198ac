"""Structure drawings: RDKit's SVG drawer, one molecule at a time."""

from __future__ import annotations

from rdkit import Chem, RDLogger
from rdkit.Chem.Draw import rdMolDraw2D

__all__ = ["depict_svg"]


def depict_svg(smiles: str, width: int = 220, height: int = 160) -> str | None:
    """An SVG drawing of ``smiles`` (2D coordinates computed), ``None`` when RDKit cannot read
    it. Atom labels and notes are never taken from the input: a SMILES carries no markup into
    the drawing (CXSMILES extensions are not parsed)."""
    RDLogger.DisableLog("rdApp.*")  # type: ignore[attr-defined]
    params = Chem.SmilesParserParams()
    params.allowCXSMILES = False  # type: ignore[assignment]
    mol = Chem.MolFromSmiles(smiles, params) if smiles else None
    if mol is None:
        return None
    drawer = rdMolDraw2D.MolDraw2DSVG(width, height)
    drawer.drawOptions().clearBackground = False  # type: ignore[assignment]
    try:
        rdMolDraw2D.PrepareAndDrawMolecule(drawer, mol)
    except (RuntimeError, ValueError):
        return None
    drawer.FinishDrawing()
    return str(drawer.GetDrawingText())
