from flux_proxy.cli import main

raise SystemExit(main())
