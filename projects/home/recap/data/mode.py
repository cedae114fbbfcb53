"""The data loader's modes, named by the loader (data/loader.py) and the epoch stream it reads from
(data/epoch_stream.py): train shuffles and drops the last partial batch; eval and predict read every row once, in
order (predict without labels)."""

from typing import Literal

Mode = Literal["train", "eval", "predict"]
