# Starts Autobahn's wstest with every listening socket on 127.0.0.1 (wstest
# binds 0.0.0.0 by default, which would open the test machine to its network).
# Same arguments as wstest: python wstest_local.py -m fuzzingclient -s spec.json
# Python 2.7, inside the virtualenv tests/autobahn/setup.sh makes.
import sys

from twisted.internet import posixbase

_listen_tcp = posixbase.PosixReactorBase.listenTCP
_listen_ssl = posixbase.PosixReactorBase.listenSSL


def listen_tcp(self, port, factory, backlog=50, interface=''):
    return _listen_tcp(self, port, factory, backlog, '127.0.0.1')


def listen_ssl(self, port, factory, context_factory, backlog=50, interface=''):
    return _listen_ssl(self, port, factory, context_factory, backlog, '127.0.0.1')


posixbase.PosixReactorBase.listenTCP = listen_tcp
posixbase.PosixReactorBase.listenSSL = listen_ssl

from autobahntestsuite.wstest import run  # noqa: E402  (after the patch, on purpose)

sys.exit(run())
