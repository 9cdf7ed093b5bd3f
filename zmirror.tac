# twistd -ny zmirror.tac
# Settings from the environment: ZMIRROR_DATA, ZMIRROR_CONFIG, ZMIRROR_LISTEN.
from twisted.application import service
from twisted.internet import reactor

from zmirror.tap import makeService, options_from_env

application = service.Application("zmirror")
makeService(options_from_env(), reactor).setServiceParent(application)
