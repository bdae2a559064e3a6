import sys

from router.daemon.main import main

sys.exit(main())
