#!/usr/bin/env python3
"""PyTorch pickle checkpoints (`torch.save`'s zip format) for the `.bin` reader. Run by hand, never in CI:

    ~/.reins-reference/bin/python Tests/Fixtures/make_pickle_fixtures.py

Pinned: torch==2.15.0, transformers==4.57.6, safetensors==0.8.0 (the versions Tests/Fixtures/reference-venv.sh installs).

Writes Tests/Fixtures/pickle/tensors.bin — float32, float16, bfloat16 and float64 tensors, a transposed (strided) view,
two views of one storage at different offsets, a 0-d tensor and an int64 tensor — with tensors_expected.safetensors
holding each as a contiguous float32 copy; and Tests/Fixtures/models/bert-cls-bin, the bert-cls fixture saved by
transformers as pytorch_model.bin, and as shards with pytorch_model.bin.index.json in models/bert-cls-bin-sharded (their
logits are bert-cls's io.safetensors); and pickled twins of two adapter
fixtures, as older PEFT and the adapters library's default save write them (`torch.save` of the same state dict):
adapters/bert-lora/pickled (adapter_model.bin) and adapters/bert-houlsby-adapterhub/hub-pickled (pytorch_adapter.bin,
pytorch_model_head.bin), whose expected logits are their safetensors siblings'.
"""
import os
import shutil

import torch
from safetensors.torch import load_file, save_file
from transformers import BertForSequenceClassification

HERE = os.path.dirname(os.path.abspath(__file__))
torch.manual_seed(1127)

base = torch.randn(20)
tensors = {
    "plain": torch.randn(3, 5),
    "transposed": torch.randn(4, 6).t(),
    "shared_a": base[2:8].view(2, 3),
    "shared_b": base[10:14],
    "half": torch.randn(2, 3).half(),
    "bf16": torch.randn(5).bfloat16(),
    "double": torch.randn(2, 2).double(),
    "scalar": torch.tensor(1.5),
    "ids": torch.arange(7) * 3,
}
assert not tensors["transposed"].is_contiguous()
os.makedirs(os.path.join(HERE, "pickle"), exist_ok=True)
torch.save(tensors, os.path.join(HERE, "pickle", "tensors.bin"))
save_file({k: v.float().contiguous() for k, v in tensors.items()}, os.path.join(HERE, "pickle", "tensors_expected.safetensors"))

model = BertForSequenceClassification.from_pretrained(os.path.join(HERE, "models", "bert-cls"))
model.save_pretrained(os.path.join(HERE, "models", "bert-cls-bin"), safe_serialization=False)
# The same, sharded: pytorch_model-0000K-of-0000N.bin listed in pytorch_model.bin.index.json.
model.save_pretrained(os.path.join(HERE, "models", "bert-cls-bin-sharded"), safe_serialization=False, max_shard_size="30KB")
print(sorted(os.listdir(os.path.join(HERE, "models", "bert-cls-bin-sharded"))))
print(sorted(os.listdir(os.path.join(HERE, "models", "bert-cls-bin"))))

# A checkpoint whose pickle calls os.system("echo ...") when Python unpickles it: the reader must refuse it by name.
import zipfile
evil = b"\x80\x02cos\nsystem\nq\x00X\x0b\x00\x00\x00echo pickleq\x01\x85q\x02Rq\x03."
with zipfile.ZipFile(os.path.join(HERE, "pickle", "refused.bin"), "w", compression=zipfile.ZIP_STORED) as z:
    z.writestr(zipfile.ZipInfo("refused/data.pkl", date_time=(1980, 1, 1, 0, 0, 0)), evil)


def pickled_twin(source, target, renames):
    os.makedirs(target, exist_ok=True)
    for name in os.listdir(source):
        if name in renames:
            torch.save(load_file(os.path.join(source, name)), os.path.join(target, renames[name]))
        elif name.endswith(".json"):
            shutil.copy(os.path.join(source, name), os.path.join(target, name))


ADAPTERS = os.path.join(HERE, "adapters")
pickled_twin(os.path.join(ADAPTERS, "bert-lora"), os.path.join(ADAPTERS, "bert-lora", "pickled"),
             {"adapter_model.safetensors": "adapter_model.bin"})
pickled_twin(os.path.join(ADAPTERS, "bert-houlsby-adapterhub", "hub"), os.path.join(ADAPTERS, "bert-houlsby-adapterhub", "hub-pickled"),
             {"adapter.safetensors": "pytorch_adapter.bin", "model_head.safetensors": "pytorch_model_head.bin"})

# A tensor whose shape overflows any element count, over a 15-element storage: must be refused, not allocated.
import collections
import io
import pickle


class Storage:
    pass


class Rebuild:
    def __init__(self, *args):
        self.args = args

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, self.args)


class StoragePickler(pickle.Pickler):
    def persistent_id(self, obj):
        return ("storage", torch.FloatStorage, "0", "cpu", 15) if isinstance(obj, Storage) else None


buf = io.BytesIO()
StoragePickler(buf, protocol=2).dump({"huge": Rebuild(Storage(), 0, (2 ** 62, 4), (4, 1), False, collections.OrderedDict())})
with zipfile.ZipFile(os.path.join(HERE, "pickle", "oversized.bin"), "w", compression=zipfile.ZIP_STORED) as z:
    z.writestr(zipfile.ZipInfo("oversized/data.pkl", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue())
    z.writestr(zipfile.ZipInfo("oversized/data/0", date_time=(1980, 1, 1, 0, 0, 0)), b"\0" * 60)
