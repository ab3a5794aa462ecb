"""Coordinator drivers: leadership held in a coordination service, one file per service.

``base`` has what every driver shares (the URL parser, the driver interface, errors); each
driver imports its client library only when it is used, so that none is a dependency.
"""
