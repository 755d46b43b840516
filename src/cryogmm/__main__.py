from cryogmm.cli import console_main

console_main()
