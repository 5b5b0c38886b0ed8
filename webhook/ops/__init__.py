"""Operator tools that run on a laptop against a cluster: ``doctor`` and ``import docker-config``.

Nothing here runs inside the webhook. The pure parts (:mod:`.kubelet_match`,
:mod:`.findings`) are free of I/O so that they can be table-tested; the cluster reads are
in :mod:`webhook.kube.inspect`, the network probe of the webhook in :mod:`.probe`, the
credential helpers in :mod:`.credhelpers`.
"""
