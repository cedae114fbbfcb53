"""Group ids of the grouped metrics (eval_groups.py): integer ids as they are, other values by a hash that every
process computes alike, whatever its string hash salt."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import inference_helpers as helpers  # noqa: E402

from projects.home.recap.eval_groups import group_ids_of  # noqa: E402


def test_group_ids_are_integers_or_a_hash_that_is_the_same_in_every_process():
    assert group_ids_of(np.array([5, -3, 5])).tolist() == [5, -3, 5]
    names = np.array(["ann", "bob", "ann", None], dtype=object)
    ids = group_ids_of(names).tolist()
    assert ids[0] == ids[2] and len({ids[0], ids[1], ids[3]}) == 3
    script = ("import numpy as np; from projects.home.recap.eval_groups import group_ids_of; "
              "print(group_ids_of(np.array(['ann', 'bob', 'ann', None], dtype=object)).tolist())")
    seed = str(hash("ann") % 1000 + 1)  # another string hash salt than this process's
    out = subprocess.run([sys.executable, "-c", script], cwd=helpers.REPO, capture_output=True, text=True,
                         env={**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(helpers.REPO)})
    assert out.stdout.strip() == str(ids), out.stderr[-2000:]
