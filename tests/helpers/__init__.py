"""What several test modules share, in one place: the command line run in this process
(``cli``), bad-input checks (``hostile``), the small supernets and studies the tests build
(``hostile``, ``shared``), one backbone's end-to-end check (``backbone``), the cluster
tests' servers and search commands (``servers``), and fake Fashion-MNIST files
(``fashion``). Test modules import from here, never from one another."""
