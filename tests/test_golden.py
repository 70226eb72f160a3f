"""The golden-number comparison of the experiments' tests (tests/helpers.py):
exact where the fixtures were recorded, loose (float drift) elsewhere."""
import pytest

from tests import helpers


def test_fixtures_record_this_kind_of_machine_and_a_change_makes_them_loose():
  golden = {'machine': helpers.machine()}
  assert helpers.golden_exact(golden)
  other = dict(golden['machine'], cpu_count=golden['machine']['cpu_count'] + 6)
  assert not helpers.golden_exact({'machine': other})
  assert not helpers.golden_exact({})


def test_exact_catches_a_drift_loose_allows_it_but_not_a_real_change():
  want = {'acc': [0.5, 0.25], 'holds': True, 'name': 'rep', 'n': 3}
  drift = {'acc': [0.5 * (1 + 1e-5), 0.25], 'holds': False, 'name': 'rep', 'n': 3}
  with pytest.raises(AssertionError):
    helpers.assert_same_numbers(drift, want, **helpers.GOLDEN_EXACT)
  helpers.assert_same_numbers(drift, want, **helpers.GOLDEN_LOOSE, exact=False)
  changed = dict(drift, acc=[0.6, 0.25])  # another key stream moves numbers this much
  with pytest.raises(AssertionError):
    helpers.assert_same_numbers(changed, want, **helpers.GOLDEN_LOOSE, exact=False)
  with pytest.raises(AssertionError):  # structure and strings always count
    helpers.assert_same_numbers(dict(drift, name='clean'), want, **helpers.GOLDEN_LOOSE,
                                exact=False)
