from onnxcomp.cli import main

raise SystemExit(main())
