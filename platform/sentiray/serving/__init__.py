"""Ray Serve endpoints: any family's model behind HTTP (its own routes, OpenAI-compatible chat).

- :mod:`sentiray.serving.server`: the deployment (HTTP and the model in each replica, two lanes)
- :mod:`sentiray.serving.ingress`: the FastAPI app of a replica (auth, admission, errors, probes)
- :mod:`sentiray.serving.endpoints`: a family's routes (``Family.endpoints``) on that app
- :mod:`sentiray.serving.chat`: the OpenAI-compatible routes
- :mod:`sentiray.serving.batching`: dynamic batching, a failing row isolated
- :mod:`sentiray.serving.sources`: model sources, checked on the driver, loaded in replicas
- :mod:`sentiray.serving.schemas`: shared bodies and the limit checks
- :mod:`sentiray.serving.app`: ``build_app`` (Serve import path), ``sentiray serve``
- :mod:`sentiray.serving.demo_step`: the demo's serving step

The load generator is a client tool: :mod:`sentiray.clients.loadtest`.
"""
