"""The control plane's CA service: join tokens and the certificate-signing API on top of
:mod:`certs`."""
