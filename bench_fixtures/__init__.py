"""PyTorch vs TensorFlow (and Keras on JAX) fine-tuning benchmark: a pytest-benchmark plugin, its experiment and its tools.

Layers, lowest first (each imports only the ones below it; tests/test_plugin.py checks):
    files, settings, config, machine, peaks, registry   leaf modules (settings: the one table of options)
    data/          CIFAR-10 format, download, synthetic set, subsets and orders
    models.py      what every framework must agree on per model
    telemetry/     timeline (in the worker), monitor (in the parent)
    frameworks/    the backend protocol, one backend per framework, the bare reference steps
    runner/        the worker process, the case and its five steps
    analysis/      run files, gate, report, parity, developer experience, overhead
    plugin.py, cli.py, benchmark_compat.py   pytest and the `bench` command
"""
