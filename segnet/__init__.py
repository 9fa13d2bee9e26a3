"""segnet: which decoder should a U-Net use? Decoder ablation on TGS salt, tracked in MLflow."""

import os

# TensorFlow's C++ start-up chatter (oneDNN, CUDA stubs) buries segnet's own output; errors still show.
# Without an NVIDIA driver, the CUDA-enabled wheel also logs a harmless "failed call to cuInit" error.
# A level the user set is theirs: then the command line shows everything TensorFlow prints (segnet.tfnoise).
# SEGNET_TF_LOG_DEFAULT records the level segnet chose, so that processes started from this one (an
# ablation's children, a test's CLI runs) inheriting it do not take it for the user's.
_level = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
TF_LOG_LEVEL_FROM_USER = _level is not None and _level != os.environ.get("SEGNET_TF_LOG_DEFAULT")
if _level is None:
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = os.environ["SEGNET_TF_LOG_DEFAULT"] = (
        "2" if os.path.exists("/dev/nvidiactl") else "3")

__version__ = "0.1.0"
