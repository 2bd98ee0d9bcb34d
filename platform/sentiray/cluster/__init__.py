"""Running sentiray on a Ray cluster: job submission (``submit.py``), the ``submit`` /
``jobs`` / ``k8s`` commands (``commands.py``) and KubeRay manifests rendered from the
project's own configs (``k8s.py``)."""
