"""Built-in methods; importing this package registers them as lazy placeholders."""

from __future__ import annotations

from registry import METHODS

# name -> ("module:Class", aliases). A method module is imported only when the method is used;
# its own `@register_method` then fills the placeholder.
BUILTIN_METHODS: dict[str, tuple[str, tuple[str, ...]]] = {
    "zero-shot": ("benchmark.methods.baselines:ZeroShot", ()),
    "linear-probe": ("benchmark.methods.baselines:LinearProbe", ()),
    "ft-adam": ("benchmark.methods.finetune:FtAdam", ("ft",)),
    "ft-sgd": ("benchmark.methods.finetune:FtSgd", ()),
    "lora-adam": ("benchmark.methods.finetune:LoraAdam", ("lora",)),
    "lora-sgd": ("benchmark.methods.finetune:LoraSgd", ()),
    "ntk-sgd": ("benchmark.methods.kernel:NtkSgd", ()),
    "ntk-signgd": ("benchmark.methods.kernel:NtkSignGd", ()),
    "ntk-adam": ("benchmark.methods.kernel:NtkAdam", ()),
    "lora-ntk-sgd": ("benchmark.methods.kernel:LoraNtkSgd", ()),
    "lora-ntk-adam": ("benchmark.methods.kernel:LoraNtkAdam", ()),
}

for _name, (_target, _aliases) in BUILTIN_METHODS.items():
    if not METHODS.registered(_name):  # no plugin discovery before the built-ins are in
        METHODS.add(_name, _target, aliases=_aliases)
