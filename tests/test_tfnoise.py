"""segnet.tfnoise: TensorFlow's start-up lines off the CLI's stderr, everything else kept."""

from __future__ import annotations

import os
import subprocess
import sys

from segnet import tfnoise

NOISE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1795779884.470238   29346 cudart_stub.cc:31] Could not find cuda drivers on your machine, "
    "GPU will not be used.",
    "I0000 00:00:1795780102.306937     417 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to "
    "use available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the "
    "appropriate compiler flags.",
    "E0000 00:00:1795780107.889270     417 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
    "Failed call to cuInit: UNKNOWN ERROR (303)",
]
KEPT = [
    "E0000 00:00:1795780107.889270     417 some_op.cc:52] something real broke",
    "F0000 00:00:1795780107.889270     417 cuda_platform.cc:52] failed call to cuInit: fatal",  # fatal: kept
    "segnet: error: a real error",
    "UserWarning: a Python warning",
]


def test_only_known_start_up_lines_are_dropped():
    text = "".join(f"{ln}\n" for pair in zip(NOISE, KEPT + [""], strict=False) for ln in pair if ln)
    assert tfnoise.wanted(text) == "".join(f"{ln}\n" for ln in KEPT)


def test_filtered_stderr_replays_the_rest_at_the_file_descriptor(capfd):
    with tfnoise.filtered_stderr():
        for ln in [*NOISE[:2], KEPT[0], NOISE[2], KEPT[1]]:
            os.write(2, f"{ln}\n".encode())  # what C++ writes, below sys.stderr
    assert capfd.readouterr().err == f"{KEPT[0]}\n{KEPT[1]}\n"


def _user_level(env: dict) -> str:
    ours = ("TF_CPP_MIN_LOG_LEVEL", "SEGNET_TF_LOG_DEFAULT")
    env = {k: v for k, v in os.environ.items() if k not in ours} | env
    code = "import os, segnet; print(segnet.TF_LOG_LEVEL_FROM_USER, os.environ['TF_CPP_MIN_LOG_LEVEL'])"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.split()


def test_a_level_the_user_set_turns_the_filter_off_and_children_inherit_segnets_default():
    flag, level = _user_level({})
    assert flag == "False" and level in ("2", "3")
    assert _user_level({"TF_CPP_MIN_LOG_LEVEL": "0"}) == ["True", "0"]
    # An ablation's child inherits the level segnet chose, with its marker: still segnet's default.
    assert _user_level({"TF_CPP_MIN_LOG_LEVEL": level, "SEGNET_TF_LOG_DEFAULT": level}) == ["False", level]
