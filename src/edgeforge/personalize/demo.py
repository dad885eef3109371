"""`make demo`'s personalisation step: one simulated user, before and after."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["demo_personalize"]


def demo_personalize(
    demo_dir: str | Path, module: Any = None, data: Any = None, *, samples: int = 20
) -> str:
    """Build the digits CNN's personalisation package into `demo_dir/personalize/`, fit a head
    for one simulated user (rotated digits, another pen, their own class mix) from `samples`
    labelled samples on the device side, and return one line: accuracy on that user's own
    held-out data before and after, and what the guard decided. `module` and `data` are the
    demo's trained CNN and its `DigitsData` (trained here when not given)."""
    import torch

    from edgeforge._quiet import native_output_to
    from edgeforge.fleet.personal import PersonalizationPackage
    from edgeforge.personalize.build import personalize
    from edgeforge.personalize.simulate import digits_users

    if module is None or data is None:
        from edgeforge.zoo import train_digits_cnn

        module, data, _ = train_digits_cnn()
    folder = Path(demo_dir) / "personalize"
    build = personalize(
        module,
        folder / "package",
        example_inputs=(torch.from_numpy(data.test_x[:1]),),
        input_names=["image"],
        name="digits-cnn",
        force=True,
    )
    package = PersonalizationPackage.load(build.out)
    user = digits_users(data.test_x, data.test_y, 1, samples=samples, seed=7)[0]
    with native_output_to(folder / "train.log"):  # ExecuTorch's runtime logs from C
        model = package.train(user.samples, user.labels)
    model.save(folder / "user")
    before = float((package.embed(user.held_x)[0].argmax(1) == user.held_y).mean())
    after = float((model.predict(user.held_x).argmax(1) == user.held_y).mean())
    return (
        f"personalised for one user ({user.style}; {samples} samples, {model.form} form, "
        f"{model.train_seconds * 1000:.0f} ms): accuracy on their own held-out data "
        f"{100 * before:.1f}% -> {100 * after:.1f}% ({model.reason})"
    )
