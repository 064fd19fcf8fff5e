"""The verification table's second runner: every registered identity must hold (seed 0 and 1)."""
import pytest

from linmaml.verification import all_identities

IDENTITIES = all_identities()


@pytest.mark.parametrize("ident", IDENTITIES, ids=[i.name for i in IDENTITIES])
@pytest.mark.parametrize("seed", [0, 1])
def test_identity_holds(ident, seed):
    row = ident.run(seed)
    assert row["instances"] > 0
    assert row["passed"], f"{ident.name}: max error {row['max_rel_error']:.3e} > tolerance {ident.tolerance:.1e}"
