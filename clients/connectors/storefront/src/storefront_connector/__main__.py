import sys

from storefront_connector.main import main

sys.exit(main())
