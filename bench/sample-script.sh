# A sample script for `make run`: shows what a project's script sees.
echo "I am $(id)"
echo "working directory: $PWD (HOME=$HOME, TMPDIR=$TMPDIR)"
echo "the whole filesystem I can see: $(ls /)"
echo "processes I can see:"; ps -o pid,user,args 2>/dev/null || ls /proc | grep -E '^[0-9]+$'
echo "hostname: $(hostname)"
if cat /etc/shadow >/dev/null 2>&1; then echo "UNEXPECTED: /etc/shadow is readable"; exit 1; fi
echo "/etc/shadow: not readable, as expected"
