"""Ray Serve endpoints: the student behind FastAPI (sentiment and OpenAI-compatible routes).

- :mod:`sentiray.serving.schemas`: request/response bodies and the limit checks
- :mod:`sentiray.serving.model_server`: the batched, autoscaled model deployment
- :mod:`sentiray.serving.ingress`: the FastAPI deployment (routes, auth, errors)
- :mod:`sentiray.serving.app`: ``build_app`` (Serve import path), ``sentiray serve``
- :mod:`sentiray.serving.loadtest`: ``sentiray loadtest URL``
- :mod:`sentiray.serving.demo_step`: the demo's serving step
"""
