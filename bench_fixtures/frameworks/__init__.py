"""The backend protocol (`protocol.py`), one backend module per framework, the Keras half two of them
share (`keras_common.py`, `keras_port.py`) and the bare reference steps (`bare.py`).

Nothing here imports a framework. The registry that names them lives below the backends, in
`bench_fixtures/registry.py`.
"""
