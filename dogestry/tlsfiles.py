"""Files OpenSSL reads whole, checked before it does.

OpenSSL opens the certificate and key files it is named and reads them to the end, with no
limit and no timeout: a FIFO named as a CA bundle (DOCKER_CERT_PATH/ca.pem, AWS_CA_BUNDLE,
SSL_CERT_FILE) hung dogestry for ever, and a huge file would cost its size in memory. A
missing file is left to OpenSSL, whose own error names it.
"""
import os
import stat

MAX_TLS_FILE = 16 << 20  # a CA bundle is a few hundred KiB


def check_tls_file(path, named_by=None):
    """Raise OSError naming path (and the setting that named it) when it is not a regular
    file of at most MAX_TLS_FILE bytes."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return
    where = f"{path[:300]} ({named_by})" if named_by else path[:300]
    if not stat.S_ISREG(info.st_mode):
        raise OSError(f"{where} is not a regular file")
    if info.st_size > MAX_TLS_FILE:
        raise OSError(f"{where} is {info.st_size} bytes, more than a certificate or key file holds "
                      f"({MAX_TLS_FILE >> 20} MiB)")


def check_default_ca_file(environ=os.environ):
    """SSL_CERT_FILE, which OpenSSL reads for every context made with the default paths."""
    if environ.get("SSL_CERT_FILE"):
        check_tls_file(environ["SSL_CERT_FILE"], "SSL_CERT_FILE")
