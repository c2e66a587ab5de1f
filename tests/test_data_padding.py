"""`zhlora data check` counts the padded positions a recipe would compute (stats.padded_positions)."""
from __future__ import annotations

from zhlora.data.stats import padded_positions


def test_padded_positions_per_batching():
    lengths = [1, 2, 3, 10, 12]              # 12 is cut to the cutoff, 10
    whole = padded_positions(lengths, cutoff_len=10, batch_size=5)
    assert whole["real"] == 26
    assert whole["padded"] == 5 * 10 - 26        # one batch, padded to its longest
    # packed: rows [10], [10], [3, 2, 1] -> lengths 10, 10, 6 in one batch: 4 filler positions
    assert whole["packed"] == 4
    single = padded_positions(lengths, cutoff_len=10, batch_size=1)
    assert single["padded"] == 0 and single["packed"] == 0
