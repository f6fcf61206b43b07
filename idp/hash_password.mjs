// Prints the password_scrypt value of an approver for APPROVERS_FILE
// (approvers.mjs): the password is read from stdin, never from the command
// line (where `ps` and shell history would keep it); one trailing newline
// is dropped.
//
//   read -rs PW && printf '%s' "$PW" | node idp/hash_password.mjs; unset PW

import { hashPassword } from './approvers.mjs';

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const password = Buffer.concat(chunks).toString('utf8').replace(/\r?\n$/, '');
if (password === '') {
  console.error('no password on stdin');
  process.exit(2);
}
console.log(hashPassword(password));
