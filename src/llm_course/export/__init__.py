"""Export a trained model to a deployable format, checked against PyTorch: ``llm-course export onnx``.

Submodules are imported by name (``llm_course.export.onnx``), so importing this package loads neither onnx,
onnxruntime nor the model code.
"""
