"""segnet: which decoder should a U-Net use? Decoder ablation on TGS salt, tracked in MLflow."""

import os

# TensorFlow's C++ start-up chatter (oneDNN, CUDA stubs) buries segnet's own output; errors still show.
# Without an NVIDIA driver, the CUDA-enabled wheel also logs a harmless "failed call to cuInit" error.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if os.path.exists("/dev/nvidiactl") else "3")

__version__ = "0.1.0"
