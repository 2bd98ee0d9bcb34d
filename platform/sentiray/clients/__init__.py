"""Client tools: programs that call a running endpoint (kept out of the server package).

- :mod:`sentiray.clients.loadtest`: ``sentiray loadtest URL``
"""
